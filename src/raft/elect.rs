//! Elections as etcd runs them: pre-vote and check-quorum, on top of openraft.
//!
//! openraft's own election timer is switched off; this module's ticker decides when a member
//! campaigns, and openraft runs the vote itself (`trigger().elect()`).
//!
//! - **Pre-vote**: a voter that has not heard from a leader for a randomized election timeout
//!   (in `[e, 1.3 e)`) first asks every voter whether it would grant its vote ([`pre_vote`]),
//!   which changes no state. Only with a majority of yeses does it campaign (and raise its term).
//!   A member cut off from the others never gets a majority, so when it comes back it neither
//!   raises the term nor deposes the leader.
//! - A member answers yes only if it is not the leader, has not heard from a leader within
//!   the lease (`e` less two heartbeats), and the candidate's log is at least as up to date as
//!   its own.
//! - Two members whose timers fire together would both win their pre-votes and split the vote
//!   (each voting for itself), costing another timeout. So a member that granted another's
//!   pre-vote while its own was under way lets the one with the higher ID go first.
//! - **Check-quorum**: a leader that has not had a reply from a majority of voters (itself
//!   included) within an election timeout has lost its quorum. It then fails its pending writes
//!   and refuses new ones at once instead of letting them time out; [`Liveness::quorum_lost`]
//!   says so until replies come back or another member leads.
//!
//! Invariants: nothing here changes raft state except through `trigger().elect()`; learners and
//! members outside the membership never campaign; leadership transfer (`Campaign`) bypasses the
//! pre-vote, as etcd's `MsgTimeoutNow` does.

use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::{LogId, ServerState};
use rand::Rng;

use super::Shared;
use crate::proto::oxcdpeerpb::{PreVoteRequest, PreVoteResponse};

/// When this member last heard from a leader, and whether it leads without a quorum.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// The last accepted AppendEntries or snapshot from a leader (None: never, in this run).
    last_leader_contact: parking_lot::Mutex<Option<Instant>>,
    /// When this member's election timer was last reset (start, contact, or its own attempt).
    timer_reset: parking_lot::Mutex<Instant>,
    /// The last pre-vote this member granted: to whom and when.
    granted: parking_lot::Mutex<Option<(u64, Instant)>>,
    /// True while this member leads without a quorum (check-quorum).
    quorum_lost: tokio::sync::watch::Sender<bool>,
    /// The election timeout.
    election: Duration,
    /// The heartbeat interval.
    heartbeat: Duration,
    /// Whether to pre-vote before campaigning.
    pre_vote: bool,
}

impl Liveness {
    /// A member's liveness with election timeout `election` and heartbeat interval `heartbeat`.
    /// With `pre_vote` off, a member campaigns as soon as its election timeout passes.
    pub(crate) fn new(election: Duration, heartbeat: Duration, pre_vote: bool) -> Liveness {
        Liveness {
            last_leader_contact: parking_lot::Mutex::new(None),
            timer_reset: parking_lot::Mutex::new(Instant::now()),
            granted: parking_lot::Mutex::new(None),
            quorum_lost: tokio::sync::watch::Sender::new(false),
            election,
            heartbeat,
            pre_vote,
        }
    }

    /// Records that a leader's AppendEntries or snapshot was accepted.
    pub(crate) fn leader_contact(&self) {
        let now = Instant::now();
        *self.last_leader_contact.lock() = Some(now);
        *self.timer_reset.lock() = now;
    }

    /// Whether this member heard from a leader within the pre-vote lease.
    fn in_lease(&self) -> bool {
        let lease = self
            .election
            .saturating_sub(self.heartbeat * 2)
            .max(self.election / 2);
        self.last_leader_contact
            .lock()
            .is_some_and(|t| t.elapsed() < lease)
    }

    /// Whether a follower has gone two election timeouts without hearing from a leader (etcd's
    /// follower campaigns, or tries to, within `[1, 2)` timeouts and knows no leader meanwhile;
    /// the longest of those keeps a follower on a busy machine from reporting a live leader
    /// gone).
    pub(crate) fn leader_silent(&self) -> bool {
        self.last_leader_contact
            .lock()
            .is_none_or(|t| t.elapsed() >= self.election * 2)
    }

    /// A receiver that is true while this member leads without a quorum.
    pub(crate) fn quorum_lost(&self) -> tokio::sync::watch::Receiver<bool> {
        self.quorum_lost.subscribe()
    }

    /// Whether this member currently leads without a quorum.
    pub(crate) fn is_quorum_lost(&self) -> bool {
        *self.quorum_lost.borrow()
    }
}

/// `(term, index)` of a log id, `(0, 0)` for none: the order raft compares logs by.
fn log_key(l: Option<LogId<u64>>) -> (u64, u64) {
    l.map_or((0, 0), |l| (l.leader_id.term, l.index))
}

/// Answers a pre-vote: yes only if this member is not the leader, is outside its lease, and the
/// candidate's log is at least as up to date as its own.
pub(crate) fn answer(shared: &Shared, req: &PreVoteRequest) -> PreVoteResponse {
    let (term, leading) = {
        let m = shared.raft.metrics();
        let m = m.borrow();
        (m.current_term, m.state == ServerState::Leader)
    };
    let mine = log_key(shared.log.last_log_id().ok().flatten());
    let theirs = (req.last_log_term, req.last_log_index);
    let granted = !leading && !shared.liveness.in_lease() && theirs >= mine && req.term > term;
    if granted {
        *shared.liveness.granted.lock() = Some((req.candidate, Instant::now()));
    }
    tracing::debug!(
        candidate = %format!("{:x}", req.candidate),
        granted,
        leading,
        "pre-vote"
    );
    PreVoteResponse { granted, term }
}

/// Asks every other voter whether it would vote for this member; true with a majority.
async fn pre_vote(shared: &Shared, voters: &[u64], term: u64) -> bool {
    let (last_log_term, last_log_index) = log_key(shared.log.last_log_id().ok().flatten());
    let req = PreVoteRequest {
        candidate: shared.id,
        term: term + 1,
        last_log_term,
        last_log_index,
    };
    let ttl = shared.liveness.election / 2;
    let asks = voters
        .iter()
        .filter(|v| **v != shared.id)
        .map(|&v| async move {
            let Some(node) = shared.node_of(v) else {
                return false;
            };
            shared
                .peers
                .call(v, &node, ttl, |mut c| async move { c.pre_vote(req).await })
                .await
                .is_ok_and(|r| r.granted)
        });
    // Decided as soon as a majority said yes (or can no longer): a stopped member's silence
    // must not hold the campaign back.
    let need = voters.len() / 2 + 1;
    let mut yes = 1;
    let mut left = voters.len() - 1;
    let mut pending: futures::stream::FuturesUnordered<_> = asks.collect();
    while yes < need && yes + left >= need {
        match futures::StreamExt::next(&mut pending).await {
            Some(granted) => {
                left -= 1;
                yes += usize::from(granted);
            }
            None => break,
        }
    }
    yes >= need
}

/// Whether a majority of `voters` (this member included) replied within the election timeout.
fn has_quorum(shared: &Shared, voters: &[u64]) -> bool {
    let recent = voters
        .iter()
        .filter(|v| {
            **v == shared.id
                || shared
                    .peers
                    .last_reply(**v)
                    .is_some_and(|t| t.elapsed() < shared.liveness.election)
        })
        .count();
    recent > voters.len() / 2
}

/// The election ticker: runs until the member's raft is gone.
pub(crate) async fn run(shared: Weak<Shared>) {
    let (election, heartbeat) = match shared.upgrade() {
        Some(s) => (s.liveness.election, s.liveness.heartbeat),
        None => return,
    };
    let tick = (heartbeat / 2).max(Duration::from_millis(10));
    let random_timeout = || {
        let ms = election.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(ms..ms + ms * 3 / 10 + 1))
    };
    let mut timeout = random_timeout();
    let mut leader_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let (state, term, voters, listed) = {
            let m = shared.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let voters: Vec<u64> = membership.voter_ids().collect();
            let listed = membership.get_node(&shared.id).is_some();
            (m.state, m.current_term, voters, listed)
        };
        if state == ServerState::Shutdown {
            return;
        }
        if state == ServerState::Leader {
            let since = *leader_since.get_or_insert_with(Instant::now);
            let lost = since.elapsed() >= election && !has_quorum(&shared, &voters);
            let changed = shared.liveness.quorum_lost.send_if_modified(|l| {
                let changed = *l != lost;
                *l = lost;
                changed
            });
            if changed {
                if lost {
                    tracing::warn!(
                        term,
                        "no reply from a quorum within the election timeout: failing writes until it is back"
                    );
                } else {
                    tracing::info!(term, "a quorum replies again");
                }
            }
            *shared.liveness.timer_reset.lock() = Instant::now();
            continue;
        }
        leader_since = None;
        shared.liveness.quorum_lost.send_if_modified(|l| {
            let changed = *l;
            *l = false;
            changed
        });
        let voter = voters.contains(&shared.id);
        if !voter && listed {
            // A learner never campaigns.
            *shared.liveness.timer_reset.lock() = Instant::now();
            continue;
        }
        let waited = shared.liveness.timer_reset.lock().elapsed();
        if waited < timeout {
            continue;
        }
        *shared.liveness.timer_reset.lock() = Instant::now();
        timeout = random_timeout();
        if !voter {
            // Outside the membership and not hearing from a leader: this member may have been
            // removed. Asking the voters tells it so (they answer a removed member with
            // REMOVED_MEMBER, and it stops); it never campaigns.
            let _ = pre_vote(&shared, &voters, term).await;
            continue;
        }
        let asked = Instant::now();
        if !shared.liveness.pre_vote || pre_vote(&shared, &voters, term).await {
            if shared
                .liveness
                .last_leader_contact
                .lock()
                .is_some_and(|t| t >= asked)
            {
                // A leader was elected meanwhile (it answered the pre-vote before it won).
                continue;
            }
            let deferred = *shared.liveness.granted.lock();
            if let Some((other, at)) = deferred.filter(|(o, at)| *at >= asked && *o > shared.id) {
                tracing::info!(
                    other = %format!("{other:x}"),
                    since_ms = at.elapsed().as_millis() as u64,
                    "pre-vote won, but another member's pre-vote ran at the same time: letting it campaign"
                );
                continue;
            }
            tracing::info!(term = term + 1, "pre-vote won: campaigning");
            if let Err(e) = shared.raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
            }
        } else {
            tracing::debug!(term, "pre-vote lost: not campaigning");
        }
    }
}
