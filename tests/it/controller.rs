//! The membership controller against a mocked Kubernetes API ([`crate::kubeapi`]) and a real
//! three-member cluster whose members are named like StatefulSet pods: the exact requests it
//! makes, what it changes, and how it takes API errors.

use std::time::Duration;

use futures::StreamExt;
use oxcd::controller::client::ClientOptions;
use oxcd::controller::identity::PodIdentity;
use oxcd::controller::kube_api::KubeApi;
use oxcd::controller::manager::Controller;
use oxcd::controller::reconcile::Decision;

use crate::harness::{wait_until, Cluster, Kind};
use crate::kubeapi::{state, FakeKube, Fault, Seen};

const WAIT: Duration = Duration::from_secs(30);

async fn cluster() -> Cluster {
    let names: Vec<String> = (0..3).map(|o| format!("oxcd-{o}")).collect();
    Cluster::start_named(Kind::Oxcd, &names, &[], |_| {}).await
}

fn controller(c: &Cluster, ordinal: usize, kube: &FakeKube) -> Controller {
    let pod = PodIdentity::from_env(|k| match k {
        "OXCD_POD_NAME" => Some(format!("oxcd-{ordinal}")),
        "OXCD_POD_NAMESPACE" => Some("ns".to_string()),
        _ => None,
    })
    .expect("identity")
    .expect("a pod");
    let api = KubeApi::connect("ns", "oxcd", Some(&kube.url)).expect("kube client");
    let opts = ClientOptions {
        timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    Controller::new(
        api,
        pod,
        opts,
        format!("http://{}", c.members[ordinal].endpoint()),
        Duration::from_millis(200),
    )
}

/// `METHOD path?query` of each request (kube may start a query with `?&`).
fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| {
            let l = format!("{} {}", s.method, s.uri).replace("?&", "?");
            l.trim_end_matches('?').to_string()
        })
        .collect()
}

/// The member list, through the first running member that answers.
async fn list(c: &Cluster) -> Vec<etcd_client::Member> {
    for m in c.members.iter().filter(|m| m.running()) {
        if let Ok(mut cl) = crate::harness::try_connect(&[m.endpoint()]).await {
            if let Ok(l) = cl.member_list().await {
                return l.members().to_vec();
            }
        }
    }
    panic!("no member answers MemberList");
}

async fn members(c: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = list(c).await.iter().map(|m| m.name().to_string()).collect();
    names.sort();
    names
}

/// Waits until the members are `want` (a removed member may answer with its last list for a
/// moment before it stops).
async fn wait_members(c: &Cluster, want: &[String]) {
    wait_until(&format!("members {want:?}"), WAIT, || async {
        members(c).await == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_scale_down_removes_the_highest_ordinal() {
    let c = cluster().await;
    let kube = FakeKube::start(state("oxcd", 3, "r1"), None).await;
    let ctls: Vec<Controller> = (0..3).map(|o| controller(&c, o, &kube)).collect();
    let leader = c.wait_leader().await;

    // A follower reads its own Status and stops: not one request to Kubernetes.
    let follower = (leader + 1) % 3;
    let r = ctls[follower].reconcile().await.expect("reconcile");
    assert_eq!(r.decision, Decision::NotLeader);
    assert!(kube.take_requests().is_empty());

    // The leader reads the StatefulSet by name and the pods by the StatefulSet's selector.
    let r = ctls[leader].reconcile().await.expect("reconcile");
    assert_eq!(r.decision, Decision::Idle("steady".to_string()));
    let sel = "app.kubernetes.io%2Finstance%3Dt%2Capp.kubernetes.io%2Fname%3Doxcd";
    let seen = lines(&kube.take_requests());
    assert_eq!(
        seen,
        vec![
            "GET /apis/apps/v1/namespaces/ns/statefulsets/oxcd".to_string(),
            format!("GET /api/v1/namespaces/ns/pods?labelSelector={sel}"),
        ],
        "steady reconcile requests"
    );

    // The watch: the StatefulSet by a metadata.name field selector (all a Role restricted by
    // resourceNames allows), the pods by label; a change wakes the controller.
    let api = KubeApi::connect("ns", "oxcd", Some(&kube.url)).expect("kube client");
    let selector = "app.kubernetes.io/name=oxcd,app.kubernetes.io/instance=t";
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watching = tokio::spawn(async move {
        let changes = api.changes(selector);
        tokio::pin!(changes);
        while let Some(ev) = changes.next().await {
            if tx.send(ev.is_ok()).is_err() {
                return;
            }
        }
    });
    wait_until("both watches open", WAIT, || {
        let n = kube
            .state
            .lock()
            .requests
            .iter()
            .filter(|s| s.uri.contains("watch=true"))
            .count();
        async move { n >= 2 }
    })
    .await;
    let watches: Vec<String> = lines(&kube.take_requests())
        .into_iter()
        .filter(|l| l.contains("watch=true"))
        .collect();
    assert!(
        watches.iter().any(
            |w| w.starts_with("GET /apis/apps/v1/namespaces/ns/statefulsets?")
                && w.contains("fieldSelector=metadata.name%3Doxcd")
        ),
        "{watches:?}"
    );
    assert!(
        watches
            .iter()
            .any(|w| w.contains("/api/v1/namespaces/ns/pods?") && w.contains("labelSelector=")),
        "{watches:?}"
    );
    // What the initial lists produced is drained; then a change arrives as an event.
    while rx.try_recv().is_ok() {}
    kube.changed();
    let ev = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a change event");
    assert_eq!(ev, Some(true));
    watching.abort();

    // SIGTERM of a wanted ordinal: the member stays.
    assert!(!ctls[2].leave_if_unwanted(WAIT).await);
    assert_eq!(members(&c).await.len(), 3);

    // An API error: the reconcile fails and changes nothing.
    kube.state.lock().replicas = 2;
    let leader = c.wait_leader().await;
    kube.state.lock().faults.push(Fault {
        prefix: "GET /apis/apps/v1".to_string(),
        status: 500,
        times: 1,
    });
    assert!(ctls[leader].reconcile().await.is_err());
    assert_eq!(members(&c).await.len(), 3);

    // Scale 3 -> 2: the leader's controller removes oxcd-2 (moving leadership first if oxcd-2
    // leads); an Event on the StatefulSet says so.
    let mut decisions = Vec::new();
    for _ in 0..20 {
        let leader = c.wait_leader().await;
        let r = ctls[leader].reconcile().await.expect("reconcile");
        assert_eq!(r.failed, None, "{:?}", r.decision);
        let done = matches!(r.decision, Decision::Remove { .. });
        decisions.push(r.decision);
        if done {
            break;
        }
    }
    assert!(
        matches!(decisions.last(), Some(Decision::Remove { name, .. }) if name == "oxcd-2"),
        "{decisions:?}"
    );
    wait_members(&c, &["oxcd-0".to_string(), "oxcd-1".to_string()]).await;
    let events = kube.state.lock().events.clone();
    let removed = events
        .iter()
        .find(|e| e["reason"] == "MemberRemoved")
        .expect("a MemberRemoved event");
    assert_eq!(removed["involvedObject"]["kind"], "StatefulSet");
    assert_eq!(removed["involvedObject"]["name"], "oxcd");
    assert_eq!(removed["involvedObject"]["uid"], "uid-sts");
    assert_eq!(removed["type"], "Normal");
    assert_eq!(removed["source"]["component"], "oxcd-controller");
    assert!(
        removed["message"]
            .as_str()
            .is_some_and(|m| m.contains("oxcd-2") && m.contains("not wanted (replicas 2)")),
        "{removed}"
    );
    // Repeating the reconcile is harmless.
    let leader = c.wait_leader().await;
    let r = ctls[leader].reconcile().await.expect("reconcile");
    assert_eq!(r.decision, Decision::Idle("steady".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_an_unwanted_ordinal_leaves_and_upgrade_steps_survive_api_errors() {
    let c = cluster().await;
    let mut st = state("oxcd", 3, "r1");
    st.replicas = 2;
    let kube = FakeKube::start(st, None).await;
    let ctls: Vec<Controller> = (0..3).map(|o| controller(&c, o, &kube)).collect();

    // Scale-down seen by the terminating member itself: it leaves (moving leadership away
    // first if it leads), and says so in an Event.
    assert!(ctls[2].leave_if_unwanted(WAIT).await);
    wait_members(&c, &["oxcd-0".to_string(), "oxcd-1".to_string()]).await;
    assert!(kube
        .state
        .lock()
        .events
        .iter()
        .any(|e| e["reason"] == "MemberLeft"));

    // An OnDelete upgrade of the remaining two: the follower first. Its member is removed, then
    // its pod deleted; an Event that cannot be written does not undo or repeat the step.
    {
        let mut s = kube.state.lock();
        s.pods.remove(&2);
        s.on_delete = true;
        s.update_revision = "r2".to_string();
        s.faults.push(Fault {
            prefix: "POST /api/v1/namespaces/ns/events".to_string(),
            status: 409,
            times: 1,
        });
    }
    let leader = c.wait_leader().await;
    let follower = 1 - leader;
    let follower_id = member_id(&c, follower).await;
    kube.take_requests();
    let r = ctls[leader].reconcile().await.expect("reconcile");
    assert_eq!(
        r.decision,
        Decision::Upgrade {
            ordinal: follower as u32,
            member: Some(follower_id),
        }
    );
    assert_eq!(r.failed, None);
    let requests = kube.take_requests();
    let event = requests
        .last()
        .and_then(|s| s.body.clone())
        .unwrap_or_default();
    assert_eq!(event["reason"], "MemberUpgrading", "{event}");
    let seen = lines(&requests);
    assert_eq!(
        seen.last().map(String::as_str),
        Some("POST /api/v1/namespaces/ns/events"),
        "{seen:?}"
    );
    assert!(
        seen.contains(&format!(
            "DELETE /api/v1/namespaces/ns/pods/oxcd-{follower}"
        )),
        "{seen:?}"
    );
    wait_members(&c, &[format!("oxcd-{leader}")]).await;

    // The pod is going away: the upgrade waits, and says why once, not at every reconcile.
    let r = ctls[leader].reconcile().await.expect("reconcile");
    assert!(
        matches!(r.decision, Decision::Blocked(_)),
        "{:?}",
        r.decision
    );
    let r2 = ctls[leader].reconcile().await.expect("reconcile");
    assert_eq!(r.decision, r2.decision);
    let blocked = kube
        .state
        .lock()
        .events
        .iter()
        .filter(|e| e["reason"] == "Blocked")
        .count();
    assert_eq!(blocked, 1);

    // The old pod came back on the old revision (the delete was lost): replaced at once, as it
    // has no vote. A failing delete is reported and retried on the next reconcile.
    {
        let mut s = kube.state.lock();
        if let Some(p) = s.pods.get_mut(&(follower as u32)) {
            p.terminating = false;
        }
        s.faults.push(Fault {
            prefix: "DELETE /api/v1/namespaces/ns/pods".to_string(),
            status: 500,
            times: 1,
        });
    }
    let r = ctls[leader].reconcile().await.expect("reconcile");
    assert_eq!(
        r.decision,
        Decision::Upgrade {
            ordinal: follower as u32,
            member: None
        }
    );
    assert!(r.failed.is_some());
    assert!(kube
        .state
        .lock()
        .events
        .iter()
        .any(|e| e["reason"] == "ReconcileFailed" && e["type"] == "Warning"));
    let before = kube.state.lock().deleted.len();
    let r = ctls[leader].reconcile().await.expect("reconcile");
    assert_eq!(r.failed, None, "{:?}", r.decision);
    assert_eq!(kube.state.lock().deleted.len(), before + 1);
}

async fn member_id(c: &Cluster, ordinal: usize) -> u64 {
    list(c)
        .await
        .iter()
        .find(|m| m.name() == format!("oxcd-{ordinal}"))
        .map(|m| m.id())
        .expect("member")
}
