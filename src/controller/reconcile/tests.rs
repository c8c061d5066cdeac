//! The controller's decision as a table of situations.

use super::*;

const OLD: &str = "rev-old";
const NEW: &str = "rev-new";

fn m(ordinal: u32) -> MemberView {
    MemberView {
        id: 100 + u64::from(ordinal),
        name: format!("oxcd-{ordinal}"),
        ordinal: Some(ordinal),
        learner: false,
        healthy: true,
        applied: 500,
    }
}

fn pod(ordinal: u32, rev: &str) -> PodView {
    PodView {
        ordinal,
        ready: true,
        revision: Some(rev.to_string()),
        terminating: false,
    }
}

/// `n` healthy voters and their ready pods at `rev`, led by ordinal `leader`, wanting `desired`.
fn view(n: u32, desired: u32, leader: u32) -> View {
    View {
        desired,
        update_revision: None,
        pods: (0..n.min(desired)).map(|o| pod(o, OLD)).collect(),
        members: (0..n).map(m).collect(),
        leader: Some(100 + u64::from(leader)),
        self_id: 100 + u64::from(leader),
        leader_index: 510,
    }
}

fn with<F: FnOnce(&mut View)>(mut v: View, f: F) -> View {
    f(&mut v);
    v
}

fn upgrading(v: View) -> View {
    with(v, |v| v.update_revision = Some(NEW.to_string()))
}

fn remove(o: u32, reason: &str) -> Decision {
    Decision::Remove {
        id: 100 + u64::from(o),
        name: format!("oxcd-{o}"),
        reason: reason.to_string(),
    }
}

#[test]
fn decisions() {
    let cases: Vec<(&str, View, Decision)> = vec![
        (
            "not the leader: another controller acts",
            with(view(3, 3, 0), |v| v.self_id = 101),
            Decision::NotLeader,
        ),
        ("steady", view(3, 3, 0), Decision::Idle("steady".to_string())),
        (
            "scale up: new pods join by themselves",
            view(3, 5, 0),
            Decision::Idle("waiting for ordinal 3 to join as a learner".to_string()),
        ),
        (
            "a learner not yet in sync is left to catch up",
            with(view(3, 5, 0), |v| {
                v.members.push(MemberView { learner: true, applied: 10, ..m(3) })
            }),
            Decision::Idle("waiting for learner oxcd-3 to catch up (10 of 510)".to_string()),
        ),
        (
            "a learner in sync is promoted",
            with(view(3, 5, 0), |v| v.members.push(MemberView { learner: true, ..m(3) })),
            Decision::Promote { id: 103, name: "oxcd-3".to_string() },
        ),
        (
            "scale down removes the highest ordinal first",
            view(5, 3, 0),
            remove(4, "ordinal 4 is not wanted (replicas 3)"),
        ),
        (
            "scale down moves leadership away from a leader that is to go",
            view(5, 3, 4),
            Decision::MoveLeader {
                to: 100,
                to_name: "oxcd-0".to_string(),
                reason: "the leader oxcd-4 is to be removed: ordinal 4 is not wanted (replicas 3)"
                    .to_string(),
            },
        ),
        (
            "a pod missing while its ordinal is wanted: no removal",
            with(view(3, 3, 0), |v| {
                v.pods.retain(|p| p.ordinal != 2);
                v.members[2].healthy = false;
            }),
            Decision::Idle("steady".to_string()),
        ),
        (
            "a removal that would cost quorum is refused",
            with(view(4, 3, 0), |v| {
                v.members[1].healthy = false;
                v.members[2].healthy = false;
            }),
            Decision::Blocked(
                "removing oxcd-3 would leave 1 healthy voters of 3, fewer than a quorum".to_string(),
            ),
        ),
        (
            "a stale unstarted entry of an unwanted ordinal is removed",
            with(view(3, 3, 0), |v| {
                v.members.push(MemberView {
                    name: String::new(),
                    learner: true,
                    healthy: false,
                    ..m(3)
                })
            }),
            Decision::Remove {
                id: 103,
                name: "unstarted member 67".to_string(),
                reason: "ordinal 3 is not wanted (replicas 3)".to_string(),
            },
        ),
        (
            "an unstarted learner of a wanted ordinal waits for its pod",
            with(view(3, 4, 0), |v| {
                v.members.push(MemberView { name: String::new(), learner: true, ..m(3) })
            }),
            Decision::Idle("waiting for learner unstarted member 67 to start".to_string()),
        ),
        (
            "upgrade: followers first, highest ordinal first",
            upgrading(view(3, 3, 0)),
            Decision::Upgrade { ordinal: 2, member: Some(102) },
        ),
        (
            "upgrade: an unhealthy voter blocks the next step",
            upgrading(with(view(3, 3, 0), |v| v.members[1].healthy = false)),
            Decision::Blocked("upgrade waits: voter oxcd-1 is unhealthy".to_string()),
        ),
        (
            "upgrade: an upgraded member still rejoining blocks the next step (interrupted step)",
            upgrading(with(view(3, 3, 0), |v| {
                v.members.retain(|m| m.ordinal != Some(2));
                v.pods[2] = pod(2, NEW);
            })),
            Decision::Blocked("upgrade waits: ordinal 2 is not a member yet".to_string()),
        ),
        (
            "upgrade interrupted after the removal: the old pod without a vote is replaced",
            upgrading(with(view(3, 3, 0), |v| v.members.retain(|m| m.ordinal != Some(2)))),
            Decision::Upgrade { ordinal: 2, member: None },
        ),
        (
            "upgrade: an outdated learner is replaced before it is promoted",
            upgrading(with(view(3, 3, 0), |v| v.members[2].learner = true)),
            Decision::Upgrade { ordinal: 2, member: None },
        ),
        (
            "upgrade: a terminating outdated pod is left to go",
            upgrading(with(view(3, 3, 0), |v| {
                v.members.retain(|m| m.ordinal != Some(2));
                v.pods[2].terminating = true;
            })),
            Decision::Blocked("upgrade waits: ordinal 2 is not a member yet".to_string()),
        ),
        (
            "upgrade: the rejoined learner is promoted before anything else",
            upgrading(with(view(3, 3, 0), |v| {
                v.members[2].learner = true;
                v.pods[2] = pod(2, NEW);
            })),
            Decision::Promote { id: 102, name: "oxcd-2".to_string() },
        ),
        (
            "upgrade: a pod not ready blocks",
            upgrading(with(view(3, 3, 0), |v| v.pods[1].ready = false)),
            Decision::Blocked("upgrade waits: pod oxcd-1 is not ready".to_string()),
        ),
        (
            "upgrade: the leader last, after leadership moves to an upgraded member",
            upgrading(with(view(3, 3, 0), |v| {
                v.pods[1] = pod(1, NEW);
                v.pods[2] = pod(2, NEW);
            })),
            Decision::MoveLeader {
                to: 101,
                to_name: "oxcd-1".to_string(),
                reason: "the leader oxcd-0 is upgraded last, after leadership moves to an upgraded member"
                    .to_string(),
            },
        ),
        (
            "upgrade: done",
            upgrading(with(view(3, 3, 0), |v| {
                v.pods = (0..3).map(|o| pod(o, NEW)).collect();
            })),
            Decision::Idle("steady".to_string()),
        ),
        (
            "upgrade of a one-member cluster deletes its pod and keeps its membership",
            upgrading(view(1, 1, 0)),
            Decision::Upgrade { ordinal: 0, member: None },
        ),
    ];
    for (what, v, want) in cases {
        assert_eq!(decide(&v), want, "{what}");
    }
}

#[test]
fn removal_never_targets_a_wanted_ordinal() {
    // Whatever is unhealthy, missing or unready, members of wanted ordinals are not removed.
    for unhealthy in 0..3u32 {
        for missing_pod in 0..3u32 {
            let v = with(view(3, 3, 0), |v| {
                v.members[unhealthy as usize].healthy = false;
                v.pods.retain(|p| p.ordinal != missing_pod);
            });
            assert!(
                !matches!(decide(&v), Decision::Remove { .. }),
                "unhealthy {unhealthy}, missing pod {missing_pod}"
            );
        }
    }
}

#[test]
fn learners_count_as_in_sync_like_the_servers_promote_check() {
    assert!(in_sync(500, 510));
    assert!(!in_sync(10, 510), "below 90% of the leader's log");
    assert!(
        !in_sync(100_000, 110_000),
        "90% but more than IN_SYNC_ENTRIES behind"
    );
    assert!(in_sync(0, 0));
}

#[test]
fn every_refusal_has_a_bounded_metric_reason() {
    let refusals = [
        (
            with(view(4, 3, 0), |v| {
                v.members[1].healthy = false;
                v.members[2].healthy = false;
            }),
            "quorum",
        ),
        (
            upgrading(with(view(3, 3, 0), |v| v.members[1].healthy = false)),
            "unhealthy_voter",
        ),
        (
            upgrading(with(view(3, 3, 0), |v| v.pods[1].ready = false)),
            "pod_not_ready",
        ),
        (
            upgrading(with(view(3, 3, 0), |v| {
                v.members.retain(|m| m.ordinal != Some(2));
                v.pods[2].terminating = true;
            })),
            "not_a_member",
        ),
        (
            with(view(2, 1, 1), |v| v.members[0].healthy = false),
            "no_leader_target",
        ),
    ];
    for (v, want) in refusals {
        match decide(&v) {
            Decision::Blocked(why) => assert_eq!(blocked_kind(&why), want, "{why}"),
            other => panic!("expected a refusal ({want}), got {other:?}"),
        }
    }
}
