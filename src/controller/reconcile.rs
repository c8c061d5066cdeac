//! The membership controller's decision: from one observation of the StatefulSet, its pods and
//! the members, the one next step (or why there is none).
//!
//! Invariants (each a row of the table test):
//! - Pure and level-triggered: [`decide`] depends only on its [`View`]; repeating it after a step
//!   or after an interrupted step recomputes the same or the next step.
//! - At most one membership change per decision; only the member that is the raft leader acts.
//! - A member is removed only when its ordinal is at or above the desired replicas (or it is an
//!   entry that never started for such an ordinal), highest ordinal first; never because its pod
//!   is missing, restarting or unready while its ordinal is wanted.
//! - No removal leaves fewer healthy voters than a quorum of the voters that remain; the leader is
//!   never removed: leadership moves away first.
//! - An upgrade step (OnDelete) starts only when every wanted member is a healthy, caught-up voter
//!   and every pod is ready: followers first, the leader last after leadership moved to an
//!   upgraded member. The upgraded member rejoins as a learner and is promoted once in sync.

/// A pod of the StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Its ordinal.
    pub ordinal: u32,
    /// Whether it is Ready.
    pub ready: bool,
    /// Its `controller-revision-hash` label.
    pub revision: Option<String>,
    /// Whether it is being deleted.
    pub terminating: bool,
}

/// A member of the cluster, with what its own Status said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Member ID.
    pub id: u64,
    /// Name (empty until the member starts).
    pub name: String,
    /// The StatefulSet ordinal it stands for (from its name or peer URL), if it is one of ours.
    pub ordinal: Option<u32>,
    /// Whether it is a learner.
    pub learner: bool,
    /// Whether it answered Status with a leader and no errors.
    pub healthy: bool,
    /// Its applied raft index (from its Status).
    pub applied: u64,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The StatefulSet's desired replicas.
    pub desired: u32,
    /// The StatefulSet's update revision when it updates `OnDelete` (the controller's job).
    pub update_revision: Option<String>,
    /// The pods that exist.
    pub pods: Vec<PodView>,
    /// The members.
    pub members: Vec<MemberView>,
    /// The raft leader, as this member sees it.
    pub leader: Option<u64>,
    /// This member's ID.
    pub self_id: u64,
    /// The leader's raft index.
    pub leader_index: u64,
}

/// The one next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This member is not the leader: another controller acts.
    NotLeader,
    /// Nothing to do; the state is as wanted or another process is on its way (the reason says).
    Idle(String),
    /// Promote this learner.
    Promote {
        /// Member ID.
        id: u64,
        /// Its name.
        name: String,
    },
    /// Remove this member.
    Remove {
        /// Member ID.
        id: u64,
        /// Its name or peer URL.
        name: String,
        /// Why.
        reason: String,
    },
    /// Move leadership to `to` first.
    MoveLeader {
        /// The new leader.
        to: u64,
        /// Its name.
        to_name: String,
        /// Why.
        reason: String,
    },
    /// Upgrade this pod: remove its member (so that it comes back as a learner), then delete
    /// the pod so the StatefulSet recreates it from the new revision. `member` is `None` when
    /// there is nothing to remove first: the pod is not a voter (a learner, or no member yet),
    /// or it is the only member of a one-member cluster, whose pod is deleted with its
    /// membership kept.
    Upgrade {
        /// The pod's ordinal.
        ordinal: u32,
        /// The member to remove first.
        member: Option<u64>,
    },
    /// Something should be done but must not be now (the reason says what blocks it).
    Blocked(String),
}

/// How far behind the leader a learner may be and still count as caught up.
pub const IN_SYNC_ENTRIES: u64 = 1000;

/// A learner counts as caught up when it has applied at least 90% of the leader's log (the rule
/// the server's MemberPromote applies, as etcd's) and is at most [`IN_SYNC_ENTRIES`] behind.
pub fn in_sync(applied: u64, leader_index: u64) -> bool {
    applied.saturating_add(IN_SYNC_ENTRIES) >= leader_index
        && u128::from(applied) * 10 >= u128::from(leader_index) * 9
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn label(m: &MemberView) -> String {
    if m.name.is_empty() {
        format!("unstarted member {:x}", m.id)
    } else {
        m.name.clone()
    }
}

/// Decides the next step.
pub fn decide(v: &View) -> Decision {
    if v.leader != Some(v.self_id) {
        return Decision::NotLeader;
    }
    let voters: Vec<&MemberView> = v.members.iter().filter(|m| !m.learner).collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();

    // 1. Scale down (and entries that never started for unwanted ordinals): highest first.
    let mut unwanted: Vec<&MemberView> = v
        .members
        .iter()
        .filter(|m| m.ordinal.is_some_and(|o| o >= v.desired))
        .collect();
    unwanted.sort_by_key(|m| std::cmp::Reverse(m.ordinal));
    if let Some(m) = unwanted.first() {
        let why = format!(
            "ordinal {} is not wanted (replicas {})",
            m.ordinal.unwrap_or_default(),
            v.desired
        );
        if m.learner {
            return Decision::Remove {
                id: m.id,
                name: label(m),
                reason: why,
            };
        }
        if m.id == v.self_id {
            let target = voters
                .iter()
                .filter(|o| o.id != m.id && o.healthy && o.ordinal.is_some_and(|x| x < v.desired))
                .min_by_key(|o| o.ordinal);
            return match target {
                Some(t) => Decision::MoveLeader {
                    to: t.id,
                    to_name: label(t),
                    reason: format!("the leader {} is to be removed: {why}", label(m)),
                },
                None => Decision::Blocked(format!(
                    "cannot remove the leader {}: no healthy wanted voter to move leadership to",
                    label(m)
                )),
            };
        }
        let remaining = voters.len() - 1;
        let healthy_remaining = healthy_voters - usize::from(m.healthy);
        if remaining == 0 || healthy_remaining < quorum(remaining) {
            return Decision::Blocked(format!(
                "removing {} would leave {healthy_remaining} healthy voters of {remaining}, fewer than a quorum",
                label(m)
            ));
        }
        return Decision::Remove {
            id: m.id,
            name: label(m),
            reason: why,
        };
    }

    // 2. During an upgrade, an outdated pod that is not a voter (its member is a learner, or it
    //    has none: an interrupted upgrade step, or a pod still joining) is replaced at once:
    //    taking it away costs no vote.
    if let Some(rev) = &v.update_revision {
        let replaceable = v.pods.iter().filter(|p| {
            p.ordinal < v.desired
                && !p.terminating
                && p.revision.as_ref() != Some(rev)
                && !voters.iter().any(|m| m.ordinal == Some(p.ordinal))
        });
        if let Some(p) = replaceable.max_by_key(|p| p.ordinal) {
            return Decision::Upgrade {
                ordinal: p.ordinal,
                member: None,
            };
        }
    }

    // 3. Learners of wanted ordinals: promote once caught up, one at a time.
    if let Some(l) = v.members.iter().find(|m| m.learner) {
        if l.name.is_empty() {
            return Decision::Idle(format!("waiting for learner {} to start", label(l)));
        }
        if l.healthy && in_sync(l.applied, v.leader_index) {
            return Decision::Promote {
                id: l.id,
                name: label(l),
            };
        }
        return Decision::Idle(format!(
            "waiting for learner {} to catch up ({} of {})",
            label(l),
            l.applied,
            v.leader_index
        ));
    }

    // 4. Scale up is done by the new pods themselves (they join as learners).
    let missing: Vec<u32> = (0..v.desired)
        .filter(|o| !v.members.iter().any(|m| m.ordinal == Some(*o)))
        .collect();

    // 5. Rolling upgrade, when the StatefulSet leaves updates to us.
    let Some(rev) = &v.update_revision else {
        return idle_or_waiting(&missing);
    };
    let mut outdated: Vec<&PodView> = v
        .pods
        .iter()
        .filter(|p| p.ordinal < v.desired && p.revision.as_ref() != Some(rev))
        .collect();
    if outdated.is_empty() {
        return idle_or_waiting(&missing);
    }
    if let Some(o) = missing.first() {
        return Decision::Blocked(format!(
            "upgrade waits: {} is not a member yet",
            pod_name(v, *o)
        ));
    }
    if let Some(m) = voters.iter().find(|m| !m.healthy) {
        return Decision::Blocked(format!("upgrade waits: voter {} is unhealthy", label(m)));
    }
    if let Some(p) = v.pods.iter().find(|p| p.terminating || !p.ready) {
        return Decision::Blocked(format!(
            "upgrade waits: pod {} is not ready",
            pod_name(v, p.ordinal)
        ));
    }
    if let Some(o) = (0..v.desired).find(|o| !v.pods.iter().any(|p| p.ordinal == *o)) {
        return Decision::Blocked(format!(
            "upgrade waits: pod {} does not exist",
            pod_name(v, o)
        ));
    }
    let member_of = |o: u32| v.members.iter().find(|m| m.ordinal == Some(o));
    outdated.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
    // Followers first, the leader last.
    let next = outdated
        .iter()
        .find(|p| member_of(p.ordinal).is_some_and(|m| m.id != v.self_id))
        .or_else(|| outdated.first());
    let Some(next) = next else {
        return idle_or_waiting(&missing);
    };
    let Some(member) = member_of(next.ordinal) else {
        return Decision::Blocked(format!(
            "upgrade waits: {} is not a member",
            pod_name(v, next.ordinal)
        ));
    };
    if voters.len() == 1 {
        return Decision::Upgrade {
            ordinal: next.ordinal,
            member: None,
        };
    }
    if member.id == v.self_id {
        let upgraded = voters.iter().find(|m| {
            m.id != v.self_id
                && m.healthy
                && m.ordinal
                    .and_then(|o| v.pods.iter().find(|p| p.ordinal == o))
                    .is_some_and(|p| p.revision.as_ref() == Some(rev))
        });
        return match upgraded {
            Some(t) => Decision::MoveLeader {
                to: t.id,
                to_name: label(t),
                reason: format!(
                    "the leader {} is upgraded last, after leadership moves to an upgraded member",
                    label(member)
                ),
            },
            None => Decision::Blocked(format!(
                "upgrade waits: no upgraded healthy voter to move leadership to from {}",
                label(member)
            )),
        };
    }
    let remaining = voters.len() - 1;
    if healthy_voters - 1 < quorum(remaining) {
        return Decision::Blocked(format!(
            "upgrade waits: taking {} out would leave fewer healthy voters than a quorum",
            label(member)
        ));
    }
    Decision::Upgrade {
        ordinal: next.ordinal,
        member: Some(member.id),
    }
}

/// A short, bounded label for why a step is blocked (the `reason` of
/// `oxcd_controller_blocked_total`).
pub fn blocked_kind(message: &str) -> &'static str {
    if message.contains("quorum") {
        "quorum"
    } else if message.contains("unhealthy") {
        "unhealthy_voter"
    } else if message.contains("not ready") || message.contains("does not exist") {
        "pod_not_ready"
    } else if message.contains("not a member") {
        "not_a_member"
    } else if message.contains("move leadership") {
        "no_leader_target"
    } else {
        "other"
    }
}

fn pod_name(v: &View, ordinal: u32) -> String {
    v.members
        .iter()
        .find(|m| m.ordinal == Some(ordinal) && !m.name.is_empty())
        .map(|m| m.name.clone())
        .unwrap_or_else(|| format!("ordinal {ordinal}"))
}

fn idle_or_waiting(missing: &[u32]) -> Decision {
    match missing.first() {
        Some(o) => Decision::Idle(format!("waiting for ordinal {o} to join as a learner")),
        None => Decision::Idle("steady".to_string()),
    }
}

#[cfg(test)]
mod tests;
