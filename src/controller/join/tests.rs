//! The join decision as a table of situations.

use super::*;

const ME: &str = "http://oxcd-2.oxcd-headless.default.svc.cluster.local:2380";

fn member(id: u64, name: &str, peer: &str, learner: bool) -> Member {
    Member {
        id,
        name: name.to_string(),
        peer_ur_ls: vec![peer.to_string()],
        client_ur_ls: vec![],
        is_learner: learner,
    }
}

fn peer(n: u32) -> String {
    format!("http://oxcd-{n}.oxcd-headless.default.svc.cluster.local:2380")
}

fn voters(n: u32) -> Vec<Member> {
    (0..n)
        .map(|i| member(100 + i as u64, &format!("oxcd-{i}"), &peer(i), false))
        .collect()
}

fn view(members: Vec<Member>, linearizable: bool) -> Option<ClusterView> {
    Some(ClusterView {
        via: "http://oxcd-0:2379".to_string(),
        cluster_id: 7,
        members,
        linearizable,
    })
}

fn observed(
    ordinal: u32,
    stored: Option<(u64, u64)>,
    cluster: Option<ClusterView>,
    wanted: bool,
) -> Observed {
    Observed {
        name: format!("oxcd-{ordinal}"),
        ordinal,
        peer_url: if ordinal == 2 {
            ME.to_string()
        } else {
            peer(ordinal)
        },
        stored: stored.map(|(member_id, cluster_id)| StoredMember {
            member_id,
            cluster_id,
        }),
        cluster,
        max_learners: 1,
        wanted,
    }
}

#[test]
fn decisions() {
    let via = "http://oxcd-0:2379".to_string();
    let mut with_unstarted_me = voters(2);
    with_unstarted_me.push(member(55, "", ME, true));
    let mut with_started_me = voters(2);
    with_started_me.push(member(55, "oxcd-2", ME, false));
    let mut slot_taken = voters(2);
    slot_taken.push(member(56, "", &peer(3), true));
    let cases: Vec<(&str, Observed, Plan)> = vec![
        (
            "first start, nothing answers, ordinal 0 creates the cluster",
            observed(0, None, None, true),
            Plan::Bootstrap,
        ),
        (
            "first start, nothing answers, other ordinals wait",
            observed(2, None, None, true),
            Plan::Wait(
                "no member of the cluster answers yet; only ordinal 0 creates a new cluster"
                    .to_string(),
            ),
        ),
        (
            "ordinal 0 with no data joins a running cluster instead of creating one",
            observed(0, None, view(vec![member(101, "oxcd-1", &peer(1), false)], true), true),
            Plan::AddLearner { via: via.clone() },
        ),
        (
            "empty data, cluster running: add as a learner",
            observed(2, None, view(voters(2), false), true),
            Plan::AddLearner { via: via.clone() },
        ),
        (
            "added but crashed before starting: the unstarted entry is reused",
            observed(2, None, view(with_unstarted_me.clone(), false), true),
            Plan::Join {
                initial_cluster: format!("oxcd-0={},oxcd-1={},oxcd-2={ME}", peer(0), peer(1)),
            },
        ),
        (
            "started before but the data is gone: remove the stale entry",
            observed(2, None, view(with_started_me.clone(), true), true),
            Plan::RemoveStale { id: 55, via: via.clone() },
        ),
        (
            "stale entry on an unconfirmed list: wait rather than remove",
            observed(2, None, view(with_started_me, false), true),
            Plan::Wait("member 37 has this peer URL but the data is gone; waiting for a member list confirmed with the leader before removing it".to_string()),
        ),
        (
            "another member holds the learner slot: wait",
            observed(2, None, view(slot_taken, true), true),
            Plan::Wait("the learner slot is taken by http://oxcd-3.oxcd-headless.default.svc.cluster.local:2380; waiting for its promotion".to_string()),
        ),
        (
            "restart with data, nothing answers: start on the data",
            observed(1, Some((101, 7)), None, true),
            Plan::StartOnData,
        ),
        (
            "restart with data, still a member: start on the data",
            observed(1, Some((101, 7)), view(voters(3), false), true),
            Plan::StartOnData,
        ),
        (
            "restart with data, a learner not yet promoted: start on the data",
            observed(2, Some((55, 7)), view(with_unstarted_me, false), true),
            Plan::StartOnData,
        ),
        (
            "removed while away, ordinal still wanted: move the data aside and rejoin",
            observed(3, Some((999, 7)), view(voters(3), true), true),
            Plan::MoveAside,
        ),
        (
            "removed, but the list is not confirmed: wait",
            observed(3, Some((999, 7)), view(voters(3), false), true),
            Plan::Wait("member 3e7 is missing from the member list at http://oxcd-0:2379, which could not be confirmed with the leader".to_string()),
        ),
        (
            "removed and the ordinal is no longer wanted: exit",
            observed(3, Some((999, 7)), view(voters(3), true), false),
            Plan::Exit("member 3e7 was removed from the cluster and ordinal 3 is no longer wanted".to_string()),
        ),
        (
            "another cluster answers: keep this member's data",
            observed(1, Some((101, 8)), view(voters(3), true), true),
            Plan::StartOnData,
        ),
    ];
    for (what, o, want) in cases {
        assert_eq!(plan(&o), want, "{what}");
    }
}

#[test]
fn more_learners_allowed_means_no_wait() {
    let mut members = voters(3);
    members.push(member(56, "", &peer(3), true));
    let mut o = observed(2, None, view(members, true), true);
    o.peer_url = peer(4);
    o.max_learners = 2;
    assert!(matches!(plan(&o), Plan::AddLearner { .. }));
}

#[test]
fn moving_aside_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Copies moved aside earlier are deleted; anything else beside the data is not.
    for other in [
        "data.removed-100",
        "data.removed-200",
        "data.removed-x",
        "data.bak",
    ] {
        std::fs::create_dir_all(dir.path().join(other).join("member")).unwrap();
    }
    std::fs::create_dir_all(data.join("member")).unwrap();
    std::fs::write(data.join("member").join("x"), b"kept").unwrap();
    let to = move_aside(&data).unwrap();
    assert!(!data.exists());
    assert_eq!(std::fs::read(to.join("member").join("x")).unwrap(), b"kept");
    assert!(to
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("data.removed-"));
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let newest = to.file_name().unwrap().to_string_lossy().into_owned();
    let mut want = vec!["data.bak".to_string(), "data.removed-x".to_string(), newest];
    want.sort();
    assert_eq!(left, want);
}
