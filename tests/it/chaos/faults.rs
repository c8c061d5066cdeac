//! The faults the campaign injects into a running cluster, one kind per scenario.
//!
//! Invariants: every fault is undone by the code that made it (a killed member restarted, a
//! stopped one continued, a cut healed, a failpoint disarmed) before [`inject`] returns, so the
//! scenario then only waits for the cluster to recover on its own; each returns the moment the
//! fault began (µs on the workload's clock) for the unavailability measure.

use std::time::{Duration, Instant};

use etcd_client::{Client, CompactionOptions};

use super::workload::Workload;
use crate::harness::{connect, free_port, wait_until, Cluster, Kind, WAIT};
use crate::netns::Net;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a follower, restart it.
    KillFollower,
    /// SIGKILL the leader, restart it.
    KillLeader,
    /// SIGKILL every member at once, restart them all.
    KillAll,
    /// SIGSTOP the leader for 2.5 election timeouts, then SIGCONT.
    StopLeader,
    /// Cut the leader off from its peers (both ways) for 2.5 s.
    PartitionLeader,
    /// Drop what the leader sends one follower (one way) for 2.5 s.
    OneWayCut,
    /// Drop 30% of one member's peer packets for 3 s.
    DropPeer,
    /// Remove a follower, wipe it, add it back as a learner, promote it.
    ReplaceMember,
    /// Stop a follower while the others move well past it, so it catches up by snapshot.
    SnapshotCatchup,
    /// Compact (as far as every watcher allows) and defragment a member.
    CompactDefrag,
    /// Move the leadership to a follower.
    TransferLeader,
    /// Crash (or fail) a member at each of oxcd's failpoints in turn.
    Failpoints,
}

impl Fault {
    /// Every fault, in the matrix's order.
    pub const ALL: [Fault; 12] = [
        Fault::KillFollower,
        Fault::KillLeader,
        Fault::KillAll,
        Fault::StopLeader,
        Fault::PartitionLeader,
        Fault::OneWayCut,
        Fault::DropPeer,
        Fault::ReplaceMember,
        Fault::SnapshotCatchup,
        Fault::CompactDefrag,
        Fault::TransferLeader,
        Fault::Failpoints,
    ];

    /// Its name in the matrix.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillFollower => "kill-follower",
            Fault::KillLeader => "kill-leader",
            Fault::KillAll => "kill-all",
            Fault::StopLeader => "stop-leader",
            Fault::PartitionLeader => "partition-leader",
            Fault::OneWayCut => "one-way-cut",
            Fault::DropPeer => "drop-peer-30%",
            Fault::ReplaceMember => "replace-member",
            Fault::SnapshotCatchup => "snapshot-catchup",
            Fault::CompactDefrag => "compact-defrag",
            Fault::TransferLeader => "transfer-leader",
            Fault::Failpoints => "failpoints",
        }
    }

    /// Whether the members run in network namespaces (for cuts).
    pub fn needs_net(self) -> bool {
        matches!(
            self,
            Fault::PartitionLeader | Fault::OneWayCut | Fault::DropPeer
        )
    }

    /// Whether the real etcd can take this fault too (failpoints need oxcd's test build).
    pub fn for_etcd(self) -> bool {
        self != Fault::Failpoints
    }

    /// Extra flags for both servers.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Fault::SnapshotCatchup | Fault::Failpoints => &["--snapshot-count=300"],
            _ => &[],
        }
    }
}

/// What injecting a fault reported.
#[derive(Debug, Default)]
pub struct Injected {
    /// When the fault began (µs on the workload's clock).
    pub at: u64,
    /// Something worth a note in the matrix (a failpoint not reached, a refused transfer).
    pub note: Option<String>,
}

/// A small deterministic choice of member.
pub struct Dice(pub u64);

impl Dice {
    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn follower(c: &Cluster, leader: usize, dice: &mut Dice) -> usize {
    let others: Vec<usize> = (0..c.members.len()).filter(|&i| i != leader).collect();
    others[dice.below(others.len())]
}

async fn member_id(c: &Cluster, name: &str) -> Option<u64> {
    listed_id(&mut c.client().await, name).await
}

/// The ID of the member named `name` in the member list `client` gets.
async fn listed_id(client: &mut Client, name: &str) -> Option<u64> {
    let list = client.member_list().await.ok()?;
    list.members()
        .iter()
        .find(|m| m.name() == name)
        .map(|m| m.id())
}

/// A client over every member but `except`.
async fn client_without(c: &Cluster, except: usize) -> Client {
    let eps: Vec<String> = (0..c.members.len())
        .filter(|&i| i != except)
        .map(|i| c.members[i].endpoint())
        .collect();
    connect(&eps).await
}

/// Waits until `n` more writes have been acknowledged, or until `stop` says to give up (a
/// member armed with a failpoint crashed early and took the quorum with it); false then, or
/// when the writes do not come within the harness's patience.
async fn writes_pass(w: &Workload, n: i64, stop: impl Fn() -> bool) -> bool {
    let from = w.acked_writes();
    let deadline = Instant::now() + WAIT * 2;
    while w.acked_writes() < from + n {
        if stop() || Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Injects one fault of kind `f`, undoes it, and returns when it began.
pub async fn inject(
    f: Fault,
    c: &mut Cluster,
    net: Option<&Net>,
    w: &Workload,
    dice: &mut Dice,
    round: usize,
) -> Injected {
    let leader = c.wait_leader().await;
    let mut out = Injected {
        at: w.now(),
        note: None,
    };
    match f {
        Fault::KillFollower | Fault::KillLeader => {
            let i = if f == Fault::KillLeader {
                leader
            } else {
                follower(c, leader, dice)
            };
            c.members[i].kill();
            out.at = w.now();
            tokio::time::sleep(Duration::from_millis(300 + dice.below(700) as u64)).await;
            c.members[i].start();
            c.members[i].wait_serving().await;
        }
        Fault::KillAll => {
            for m in &mut c.members {
                m.kill();
            }
            out.at = w.now();
            for m in &mut c.members {
                m.start();
            }
            for m in &c.members {
                m.wait_serving().await;
            }
        }
        Fault::StopLeader => {
            c.members[leader].signal("STOP");
            out.at = w.now();
            tokio::time::sleep(Duration::from_millis(2500)).await;
            c.members[leader].signal("CONT");
        }
        Fault::PartitionLeader | Fault::OneWayCut | Fault::DropPeer => {
            let net = net.expect("network faults need namespaces");
            match f {
                Fault::PartitionLeader => net.isolate(leader),
                Fault::OneWayCut => net.cut_one_way(leader, follower(c, leader, dice)),
                _ => {
                    let i = if round % 2 == 0 {
                        leader
                    } else {
                        follower(c, leader, dice)
                    };
                    net.drop_random(i, 30);
                }
            }
            // From the moment the cut is in force.
            out.at = w.now();
            tokio::time::sleep(Duration::from_millis(if f == Fault::DropPeer {
                3000
            } else {
                2500
            }))
            .await;
            net.heal();
        }
        Fault::ReplaceMember => {
            let i = follower(c, leader, dice);
            out.at = w.now();
            replace(c, i).await;
        }
        Fault::SnapshotCatchup => {
            let i = follower(c, leader, dice);
            out.at = w.now();
            c.members[i].kill();
            let passed = writes_pass(w, 1000, || false).await;
            c.members[i].start();
            c.members[i].wait_serving().await;
            caught_up(c, i).await;
            if !passed {
                out.note = Some("the others wrote too slowly while the member was down".into());
            }
        }
        Fault::CompactDefrag => {
            let mut client = c.client().await;
            let current = client
                .get("ch/", None)
                .await
                .ok()
                .and_then(|r| r.header().map(|h| h.revision()))
                .unwrap_or(0);
            let target = (w.watch_floor() - 1).min(current);
            out.at = w.now();
            if target > 1 {
                if let Err(e) = client
                    .compact(target, Some(CompactionOptions::new().with_physical()))
                    .await
                {
                    out.note = Some(format!("compact {target}: {e}"));
                }
            }
            let i = dice.below(c.members.len());
            let mut one = c.members[i].client().await;
            if let Err(e) = one.defragment().await {
                out.note = Some(format!("defragment: {e}"));
            }
        }
        Fault::TransferLeader => {
            let to = follower(c, leader, dice);
            let Some(id) = member_id(c, &c.members[to].spec.name).await else {
                out.note = Some("no member ID".to_string());
                return out;
            };
            out.at = w.now();
            let mut client = c.members[leader].client().await;
            if let Err(e) = client.move_leader(id).await {
                out.note = Some(format!("move-leader: {e}"));
            }
        }
        Fault::Failpoints => {
            let points = oxcd::failpoint::ALL;
            let point = points[round % points.len()];
            out.at = w.now();
            out.note = Some(failpoint(c, w, dice, point).await);
        }
    }
    out
}

/// Waits until member `i` has applied what the leader had when it came back.
async fn caught_up(c: &Cluster, i: usize) {
    let mut all = c.client().await;
    let target = all
        .get("ch/", None)
        .await
        .ok()
        .and_then(|r| r.header().map(|h| h.revision()))
        .unwrap_or(0);
    let m = &c.members[i];
    wait_until("the member to catch up", WAIT * 2, || async move {
        let Ok(mut one) = crate::harness::try_connect(&[m.endpoint()]).await else {
            return false;
        };
        one.get(
            "ch/",
            Some(etcd_client::GetOptions::new().with_serializable()),
        )
        .await
        .ok()
        .and_then(|r| r.header().map(|h| h.revision()))
        .is_some_and(|r| r >= target)
    })
    .await;
}

/// Removes member `i`, wipes it, adds it back as a learner, starts it and promotes it.
async fn replace(c: &mut Cluster, i: usize) {
    let name = c.members[i].spec.name.clone();
    let mut client = client_without(c, i).await;
    // A member added back in an earlier round publishes its name a moment after it starts (a
    // membership change of its own, retried while another one is in progress), and a member
    // list served by a lagging member (not linearizable) can still show the ID it replaced:
    // look the ID up again until the removal takes. Also refused while the member replaced
    // before has not started yet (etcd's "not enough started members"): asked again.
    let deadline = Instant::now() + WAIT;
    let mut tried = None;
    let id = loop {
        match (listed_id(&mut client, &name).await, tried) {
            (Some(id), _) => match client.member_remove(id).await {
                Ok(_) => break id,
                Err(e) => {
                    // "member not found": a stale ID from a lagging member's list.
                    if !e.to_string().contains("member not found") {
                        tried = Some(id);
                    }
                    assert!(Instant::now() < deadline, "remove {name}: {e}");
                }
            },
            // A removal that failed on the client's side may have taken effect.
            (None, Some(id)) => break id,
            (None, None) => assert!(Instant::now() < deadline, "{name} is never listed"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.members[i].kill();
    let dir = c.members[i].spec.data_dir.clone();
    let _ = std::fs::remove_dir_all(&dir);
    let peer = c.members[i].spec.peer_url();
    let added = client
        .member_add(
            [peer],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("add the learner");
    let new_id = added.member().map(|m| m.id()).expect("new member ID");
    eprintln!("replace {name}: removed {id:x}, added {new_id:x}");
    c.members[i].spec.state = "existing".to_string();
    c.members[i].start();
    c.members[i].wait_serving().await;
    let deadline = Instant::now() + WAIT * 2;
    loop {
        match client.member_promote(new_id).await {
            Ok(_) => break,
            Err(e) => {
                if Instant::now() > deadline {
                    let log = c.members[i].log();
                    let tail = log
                        .get(log.len().saturating_sub(4000)..)
                        .unwrap_or_default();
                    panic!("the learner was never promoted: {e}\nits log:\n{tail}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Arms `point` on one member (a restart with `FAILPOINTS`), makes the cluster pass it, waits
/// for the crash, and restarts the member clean. Returns what happened, for the matrix.
async fn failpoint(c: &mut Cluster, w: &Workload, dice: &mut Dice, point: &str) -> String {
    let leader = c.wait_leader().await;
    let i = follower(c, leader, dice);
    // Points passed on every write crash after a random number of passes, the others at once.
    let frequent = point.starts_with("raft-log")
        || point.starts_with("apply-before")
        || point == "apply-after-commit";
    let action = if frequent {
        format!("{}*off->return", 20 + dice.below(200))
    } else {
        "return".to_string()
    };
    let from = c.members[i].log().len();
    c.members[i].kill();
    c.members[i].env = vec![("FAILPOINTS".to_string(), format!("{point}={action}"))];
    c.members[i].start();
    // An armed member may crash before it serves.
    serving_or_exited(&mut c.members[i]).await;
    // What makes the cluster pass the point on member i.
    let mut trigger_note = String::new();
    match point {
        "snapshot-install" => {
            c.members[i].kill();
            writes_pass(w, 1000, || false).await;
            c.members[i].start();
        }
        "snapshot-send" => {
            // Member i leads, another member lags and needs a snapshot from it.
            if let Some(id) = member_id(c, &c.members[i].spec.name).await {
                let l = c.wait_leader().await;
                let _ = c.members[l].client().await.move_leader(id).await;
            }
            let l = c.wait_leader().await;
            if l == i {
                let j = follower(c, i, dice);
                c.members[j].kill();
                // Member i may crash sending a snapshot to the third member: the quorum is gone
                // until j is back, so the wait ends there.
                let crashed = || {
                    let log = c.members[i].log();
                    log.get(from..)
                        .is_some_and(|l| l.contains("failpoint snapshot-send:"))
                };
                writes_pass(w, 1000, crashed).await;
                c.members[j].start();
            } else {
                trigger_note = " (leadership did not move)".to_string();
            }
        }
        "compaction-batch" => {
            let target = w.watch_floor() - 1;
            if target > 1 {
                let _ = c.client().await.compact(target, None).await;
            }
        }
        "defrag" => {
            let _ = c.members[i].client().await.defragment().await;
        }
        "apply-membership" => {
            let mut client = client_without(c, i).await;
            let url = format!("http://127.0.0.1:{}", free_port());
            if let Ok(r) = client
                .member_add(
                    [url],
                    Some(etcd_client::MemberAddOptions::new().with_is_learner()),
                )
                .await
            {
                if let Some(m) = r.member() {
                    let id = m.id();
                    // Removed again once the member is back (it may be the one crashing).
                    c.members[i].env.clear();
                    let crashed = wait_crash(c, i, from, point).await;
                    let _ = client.member_remove(id).await;
                    return crashed + &trigger_note;
                }
            }
        }
        _ => {}
    }
    c.members[i].env.clear();
    wait_crash(c, i, from, point).await + &trigger_note
}

/// Waits until `m` serves or its process has exited.
async fn serving_or_exited(m: &mut crate::harness::Member) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && m.running() {
        if let Ok(mut one) = crate::harness::try_connect(&[m.endpoint()]).await {
            let opts = etcd_client::GetOptions::new().with_serializable();
            if one.get("ch/", Some(opts)).await.is_ok() {
                return;
            }
        }
        if m.wait_exit(Duration::from_millis(50)).await.is_some() {
            return;
        }
    }
}

/// Waits for member `i` to stop at `point`, then restarts it without failpoints.
async fn wait_crash(c: &mut Cluster, i: usize, from: usize, point: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    // Not running: it already exited while it was being armed or triggered.
    let mut exited = (!c.members[i].running()).then_some(false);
    while exited.is_none() && Instant::now() < deadline {
        exited = c.members[i].wait_exit(Duration::from_millis(100)).await;
    }
    let log = c.members[i].log();
    let tail = log.get(from..).unwrap_or_default();
    let hit = tail.contains(&format!("failpoint {point}:"));
    let note = match (exited, hit) {
        (Some(_), true) => format!("{point}: hit"),
        (Some(_), false) => format!("{point}: exited without reaching it"),
        (None, _) => format!("{point}: not reached in 20 s"),
    };
    c.members[i].env.clear();
    if c.members[i].running() {
        c.members[i].kill();
    }
    c.members[i].start();
    c.members[i].wait_serving().await;
    note
}

/// Whether a cluster of `kind` can take fault `f`.
pub fn applies(kind: Kind, f: Fault) -> bool {
    kind == Kind::Oxcd || f.for_etcd()
}
