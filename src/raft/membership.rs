//! etcd's membership rules on top of openraft's joint consensus: add (voter or learner), promote,
//! remove, update peer URLs, and publish a member's name and client URLs once it has started.
//!
//! Invariants: changes run on the leader only, one at a time (a mutex), and each is checked the way
//! etcd's `--strict-reconfig-check` does: no change may leave fewer active started voters than the
//! new configuration's quorum; a learner is promoted only once it has caught up (90% of the
//! leader's log); at most `--max-learners` learners.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft};
use serde::{Deserialize, Serialize};

use super::peer::Peers;
use super::{ProposeError, TypeConfig};
use crate::types::{Member, MemberId};

/// A member as etcd's Cluster service shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member ID.
    pub id: u64,
    /// Name, peer and client URLs.
    pub member: Member,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// A membership change, as proposed by the Cluster service or a starting member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipOp {
    /// etcd's MemberAdd.
    Add {
        /// Peer URLs of the new member.
        peer_urls: Vec<String>,
        /// Add as a learner.
        learner: bool,
    },
    /// etcd's MemberPromote.
    Promote {
        /// The learner.
        id: u64,
    },
    /// etcd's MemberRemove.
    Remove {
        /// The member.
        id: u64,
    },
    /// etcd's MemberUpdate.
    Update {
        /// The member.
        id: u64,
        /// Its new peer URLs.
        peer_urls: Vec<String>,
    },
    /// A started member publishing its name and client URLs.
    Publish {
        /// The member.
        id: u64,
        /// Its name.
        name: String,
        /// Its client URLs.
        client_urls: Vec<String>,
    },
}

/// The result of a membership change: the changed member (for Add) and the new member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipResult {
    /// The member that was added, if any.
    pub added: Option<MemberInfo>,
    /// Every member after the change.
    pub members: Vec<MemberInfo>,
}

/// Why a membership change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MembershipError {
    /// The peer URLs are already used by a member.
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    /// The computed member ID is taken.
    #[error("member ID already exist")]
    IdExists,
    /// `--max-learners` reached.
    #[error("too many learner members in cluster")]
    TooManyLearners,
    /// The change would leave too few active started voters.
    #[error("re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    /// No such member.
    #[error("member not found")]
    NotFound,
    /// Promote of a voter.
    #[error("can only promote a learner member")]
    NotLearner,
    /// Promote of a learner that has not caught up.
    #[error("can only promote a learner member which is in sync with leader")]
    NotInSync,
    /// Raft could not carry the change.
    #[error("{0}")]
    Propose(ProposeError),
}

/// The members in `raft`'s current configuration.
pub fn members(raft: &Raft<TypeConfig>) -> Vec<MemberInfo> {
    let m = raft.metrics().borrow().membership_config.clone();
    let voters: BTreeSet<u64> = m.membership().voter_ids().collect();
    m.membership()
        .nodes()
        .map(|(id, node)| MemberInfo {
            id: *id,
            member: node.clone(),
            is_learner: !voters.contains(id),
        })
        .collect()
}

/// How far the leader has replicated to member `id`, and its own last log index, from the
/// leader's metrics (0 for what is not known).
pub(crate) fn replication_progress(m: &openraft::RaftMetrics<u64, Member>, id: u64) -> (u64, u64) {
    let matched = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map(|l| l.index)
        .unwrap_or(0);
    (matched, m.last_log_index.unwrap_or(0))
}

/// What the leader needs to check and carry out membership changes.
pub struct Ctx<'a> {
    /// Raft.
    pub raft: &'a Raft<TypeConfig>,
    /// Peer connections (for liveness).
    pub peers: &'a Peers,
    /// This member.
    pub self_id: u64,
    /// The cluster token (member IDs of added members derive from it).
    pub token: &'a str,
    /// `--max-learners`.
    pub max_learners: usize,
    /// A peer counts as active if it answered within this window.
    pub active_window: Duration,
    /// `--strict-reconfig-check`: refuse changes that would cost quorum.
    pub strict: bool,
    /// Whether an ID belonged to a member removed from the cluster (never to be used again).
    pub was_removed: &'a (dyn Fn(u64) -> bool + Sync),
}

fn map_write_err(
    e: RaftError<u64, ClientWriteError<u64, Member>>,
    self_id: u64,
) -> MembershipError {
    MembershipError::Propose(match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            Some(l) if l != self_id => ProposeError::NotLeader(l),
            _ => ProposeError::NoLeader,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            tracing::warn!(error = %c, "membership change refused by raft");
            ProposeError::NoLeader
        }
        RaftError::Fatal(_) => ProposeError::Stopped,
    })
}

impl Ctx<'_> {
    fn active(&self, id: u64) -> bool {
        id == self.self_id
            || self
                .peers
                .last_ok(id)
                .is_some_and(|t| t.elapsed() <= self.active_window)
    }

    fn started_active_voters(&self, members: &[MemberInfo], without: Option<u64>) -> usize {
        if !self.strict {
            return usize::MAX / 2;
        }
        members
            .iter()
            .filter(|m| !m.is_learner && Some(m.id) != without)
            .filter(|m| !m.member.name.is_empty() && self.active(m.id))
            .count()
    }

    async fn set_node(&self, id: u64, node: Member) -> Result<(), MembershipError> {
        self.raft
            .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), true)
            .await
            .map_err(|e| map_write_err(e, self.self_id))?;
        Ok(())
    }

    /// Carries out `op` on the leader.
    pub async fn apply(&self, op: MembershipOp) -> Result<MembershipResult, MembershipError> {
        let current = members(self.raft);
        let find = |id: u64| current.iter().find(|m| m.id == id).cloned();
        let mut added = None;
        match op {
            MembershipOp::Add { peer_urls, learner } => {
                if current
                    .iter()
                    .any(|m| m.member.peer_urls.iter().any(|u| peer_urls.contains(u)))
                {
                    return Err(MembershipError::PeerUrlExists);
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                // etcd derives the ID from the URLs, the token and the time in seconds: a member
                // replaced within the same second would get the ID just removed, which the
                // cluster refuses forever after. The next second's ID is taken instead.
                let mut at = now;
                let id = loop {
                    let id = MemberId::compute_at(&peer_urls, self.token, at).0;
                    if !(self.was_removed)(id) {
                        break id;
                    }
                    at += 1;
                };
                if find(id).is_some() {
                    return Err(MembershipError::IdExists);
                }
                let node = Member {
                    name: String::new(),
                    peer_urls,
                    client_urls: Vec::new(),
                };
                if learner {
                    let learners = current.iter().filter(|m| m.is_learner).count();
                    if learners >= self.max_learners {
                        return Err(MembershipError::TooManyLearners);
                    }
                }
                // etcd's exception: a voter may join a one-member cluster (how a cluster restored
                // from a backup grows back), though writes then wait for it to start.
                let voters = current.iter().filter(|m| !m.is_learner).count() + 1;
                let started = self.started_active_voters(&current, None);
                let to_one_member = voters == 2 && started >= 1;
                if !learner && !to_one_member && started < voters / 2 + 1 {
                    // The new voter is not started: the others must still make a quorum.
                    return Err(MembershipError::NotEnoughStarted);
                }
                self.raft
                    .add_learner(id, node.clone(), false)
                    .await
                    .map_err(|e| map_write_err(e, self.self_id))?;
                if !learner && voters == 2 {
                    // The new configuration needs the new member, which has not started: the
                    // change commits once it has, so answer as soon as it is in the membership.
                    let raft = self.raft.clone();
                    tokio::spawn(async move {
                        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                        if let Err(e) = raft.change_membership(change, false).await {
                            tracing::warn!(member = %format!("{id:x}"), error = %e, "adding a voter failed");
                        }
                    });
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                    while !members(self.raft)
                        .iter()
                        .any(|m| m.id == id && !m.is_learner)
                    {
                        if tokio::time::Instant::now() > deadline {
                            return Err(MembershipError::Propose(ProposeError::Timeout));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                } else if !learner {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| map_write_err(e, self.self_id))?;
                }
                added = Some(MemberInfo {
                    id,
                    member: node,
                    is_learner: learner,
                });
            }
            MembershipOp::Promote { id } => {
                let m = find(id).ok_or(MembershipError::NotFound)?;
                if !m.is_learner {
                    return Err(MembershipError::NotLearner);
                }
                let (matched, leader_last) =
                    replication_progress(&self.raft.metrics().borrow(), id);
                if (matched as f64) < 0.9 * leader_last as f64 {
                    return Err(MembershipError::NotInSync);
                }
                let voters = current.iter().filter(|m| !m.is_learner).count() + 1;
                if self.started_active_voters(&current, None) + usize::from(self.active(id))
                    < voters / 2 + 1
                {
                    return Err(MembershipError::NotEnoughStarted);
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| map_write_err(e, self.self_id))?;
            }
            MembershipOp::Remove { id } => {
                let m = find(id).ok_or(MembershipError::NotFound)?;
                if m.is_learner {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| map_write_err(e, self.self_id))?;
                } else {
                    let voters_after = current.iter().filter(|m| !m.is_learner).count() - 1;
                    if voters_after == 0 {
                        return Err(MembershipError::NotEnoughStarted);
                    }
                    if self.started_active_voters(&current, Some(id)) < voters_after / 2 + 1 {
                        return Err(MembershipError::NotEnoughStarted);
                    }
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| map_write_err(e, self.self_id))?;
                }
            }
            MembershipOp::Update { id, peer_urls } => {
                let m = find(id).ok_or(MembershipError::NotFound)?;
                if current
                    .iter()
                    .any(|o| o.id != id && o.member.peer_urls.iter().any(|u| peer_urls.contains(u)))
                {
                    return Err(MembershipError::PeerUrlExists);
                }
                let node = Member {
                    peer_urls,
                    ..m.member
                };
                self.set_node(id, node).await?;
            }
            MembershipOp::Publish {
                id,
                name,
                client_urls,
            } => {
                let m = find(id).ok_or(MembershipError::NotFound)?;
                let node = Member {
                    name,
                    client_urls,
                    peer_urls: m.member.peer_urls.clone(),
                };
                if node != m.member {
                    self.set_node(id, node).await?;
                }
            }
        }
        Ok(MembershipResult {
            added,
            members: members(self.raft),
        })
    }
}

/// How long a peer may be silent and still count as active (etcd's health interval).
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(5);
