//! The only user of openraft: the type configuration, the log store, the state machine glue, the
//! peer protocol and etcd's membership rules. Outside this module only concrete types
//! ([`RaftNode`], [`ProposeError`], [`MemberInfo`], ...) are used.
//!
//! Invariants:
//! - Every write goes through [`RaftNode::write`], i.e. through the log; a member that is not the
//!   leader forwards the proposal to the leader and returns the leader's result.
//! - [`RaftNode::linearizable_barrier`] returns only once the leader has confirmed its leadership
//!   (read index) and this member's state machine has applied up to that index.
//! - Membership changes run on the leader, one at a time, under etcd's strict reconfiguration rules.

// openraft's trait signatures fix the (large) storage error type.
#![allow(clippy::result_large_err)]

mod batch;
mod elect;
mod forward;
pub mod lease;
mod log_cache;
mod log_store;
pub mod membership;
mod peer;
mod peer_server;
pub mod snapshot_store;
mod state_machine;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use membership::{MemberInfo, MembershipError, MembershipOp, MembershipResult};
pub use peer::{PeerError, PeerNetwork, Peers};
pub use peer_server::PeerService;
pub use state_machine::StateMachine;
pub use state_machine::{
    ClusterFacts, CLUSTER_META_KEYS, KEY_APPLIED, KEY_MEMBERSHIP, KEY_REMOVED,
};
pub use status::RaftWatch;

use crate::apply::{Applied, Op};
use crate::auth::AuthStore;
use crate::lease::Lessor;
use crate::mvcc::Mvcc;
use crate::proto::oxcdpeerpb::peer_server::PeerServer;
use crate::proto::oxcdpeerpb::Payload;
use crate::proto::oxcdpeerpb::{CampaignRequest, ClusterInfoRequest, HashKvAt, ReadIndexRequest};
use crate::storage::Storage;
use crate::types::Member;

openraft::declare_raft_types!(
    /// oxcd's openraft type configuration: etcd member IDs as node IDs, [`Op`] as log payload.
    /// The payload is shared (`Arc`): openraft clones entries (the log cache hands out copies
    /// for apply and replication), and a clone must not copy a batch of values. An `Arc<Op>`
    /// encodes exactly as the `Op` (serde's `rc`), so the log's format is unchanged.
    pub TypeConfig:
        D = std::sync::Arc<Op>,
        R = Applied,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshot_store::SnapData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Why a proposal or a linearizable read did not complete.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeError {
    /// No leader is known.
    #[error("no leader")]
    NoLeader,
    /// Another member leads; the request must go there.
    #[error("not leader (leader is {0:x})")]
    NotLeader(u64),
    /// The raft node has stopped.
    #[error("server stopped")]
    Stopped,
    /// The request did not complete in time.
    #[error("request timed out")]
    Timeout,
    /// The leader could not be reached.
    #[error("leader unreachable: {0}")]
    LeaderUnreachable(String),
    /// Applying has fallen far behind committing, or too many proposals wait: push back.
    #[error("too many requests")]
    TooManyRequests,
    /// This member leads but no quorum has replied within an election timeout (check-quorum):
    /// the write was pending and may or may not be committed by a later leader.
    #[error("leader lost its quorum")]
    QuorumLost,
    /// The write was forwarded to a leader this member no longer follows: a new one was elected
    /// meanwhile, and the write's outcome is unknown (etcd's `ErrLeaderChanged`). Last, since
    /// variants cross the wire by index.
    #[error("leader changed")]
    LeaderChanged,
}

/// Decodes `data` as every message a peer may send this member (the payloads of AppendEntries,
/// Vote, Forward, ForwardBatch, ChangeMembership and Lease calls, and the answers a member reads back), for
/// fuzzing: no input may panic or allocate without bound; the results are dropped.
pub fn decode_peer_messages(data: &[u8]) {
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    let p = Payload {
        data: data.to_vec(),
    };
    let _ = peer::decode::<AppendEntriesRequest<TypeConfig>>(&p);
    let _ = peer::decode::<VoteRequest<u64>>(&p);
    let _ = peer::decode::<Op>(&p);
    let _ = peer::decode::<Vec<Op>>(&p);
    let _ = peer::decode::<Vec<Result<Applied, ProposeError>>>(&p);
    let _ = peer::decode::<MembershipOp>(&p);
    let _ = peer::decode::<lease::LeaseCall>(&p);
    let _ = peer::decode::<ClusterInfo>(&p);
    let _ = peer::decode::<Result<Applied, ProposeError>>(&p);
    let _ = peer::decode::<Result<MembershipResult, MembershipError>>(&p);
    let _ = ClusterFacts::decode(Some(data), Some(data), Some(data));
}

/// Failures while starting raft.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// openraft rejected the configuration.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// Opening the log or state machine failed.
    #[error("opening raft storage: {0}")]
    Storage(String),
    /// openraft failed to start or to initialize.
    #[error("raft: {0}")]
    Raft(String),
}

/// Timing and log-retention settings.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout.
    pub election: Duration,
    /// Applied entries between snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// How long a proposal may take before it fails with a timeout.
    pub request_timeout: Duration,
    /// The cluster ID (answered to joining members).
    pub cluster_id: u64,
    /// The cluster token (IDs of members added at runtime derive from it).
    pub token: String,
    /// `--max-learners`.
    pub max_learners: usize,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
    /// Pre-vote before campaigning (off: campaign as soon as the election timeout passes).
    pub pre_vote: bool,
    /// Largest peer message, in bytes.
    pub max_message: usize,
    /// Committed but unapplied entries above which proposals are refused (etcd: 5000).
    pub max_apply_backlog: u64,
}

/// A cluster's identity and members, as a joining member learns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster ID.
    pub cluster_id: u64,
    /// The members.
    pub members: Vec<MemberInfo>,
}

/// The longest a proposal waits for a leadership transfer to end.
const TRANSFER_HOLD_MAX: Duration = Duration::from_secs(10);

/// Releases the proposals held for a leadership transfer when dropped.
pub struct TransferGuard {
    shared: Arc<Shared>,
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        self.shared.transferring.send_replace(false);
    }
}

impl std::fmt::Debug for TransferGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferGuard").finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    raft: Raft<TypeConfig>,
    id: u64,
    peers: Arc<Peers>,
    request_timeout: Duration,
    state_machine: StateMachine,
    /// Whether this member has been part of the cluster's membership (applied, or effective
    /// in this run). A member catching up after joining replays configurations that predate it;
    /// only one that was in the membership can have been removed from it.
    seen_self: std::sync::atomic::AtomicBool,
    cluster_id: u64,
    token: String,
    max_learners: usize,
    strict: bool,
    membership_lock: tokio::sync::Mutex<()>,
    proposals: tokio::sync::mpsc::UnboundedSender<batch::Pending>,
    /// Batch slots in raft and the bytes queued for them, for proposals made directly when
    /// nothing waits and for those queued.
    slots: batch::Slots,
    /// The log, for its committed index.
    log: LogStore,
    max_apply_backlog: u64,
    /// True while leadership is being handed to another member: new proposals wait (as etcd
    /// drops them during a transfer), so the transferee can catch up and win the election.
    transferring: tokio::sync::watch::Sender<bool>,
    reads: tokio::sync::mpsc::UnboundedSender<batch::PendingRead>,
    /// Writes waiting to be forwarded to the leader ([`forward`]).
    forwards: forward::Queue,
    /// Reads waiting for a read index from the leader (with the leader to ask).
    remote_reads: tokio::sync::mpsc::UnboundedSender<(u64, batch::PendingRead)>,
    leases: Arc<Lessor>,
    /// Bound of one forwarded lease call: one election timeout.
    lease_forward_timeout: Duration,
    /// The term and time (before the check began) a quorum last confirmed this leader, for
    /// lease calls.
    lease_confirmed: parking_lot::Mutex<Option<(u64, std::time::Instant)>>,
    /// Leader contact and quorum, for pre-vote and check-quorum ([`elect`]).
    liveness: elect::Liveness,
}

fn forward_err(e: RaftError<u64, ClientWriteError<u64, Member>>, me: u64) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            Some(l) if l != me => ProposeError::NotLeader(l),
            _ => ProposeError::NoLeader,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(_)) => ProposeError::NoLeader,
        RaftError::Fatal(_) => ProposeError::Stopped,
    }
}

fn leader_err(e: RaftError<u64, CheckIsLeaderError<u64, Member>>, me: u64) -> ProposeError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => match f.leader_id {
            Some(l) if l != me => ProposeError::NotLeader(l),
            _ => ProposeError::NoLeader,
        },
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => ProposeError::NoLeader,
        RaftError::Fatal(_) => ProposeError::Stopped,
    }
}

impl Shared {
    /// Waits until a read of local state is linearizable: the leader confirms its leadership and
    /// hands out a read index, then this member waits until it has applied that index.
    ///
    /// A follower that knows its leader asks it at once (reads waiting together share one
    /// request, [`batch::run_remote_reads`]); otherwise the read starts here and follows the
    /// leader openraft names.
    pub(crate) async fn linearizable_barrier(&self) -> Result<(), ProposeError> {
        let mut hint = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            match m.current_leader {
                Some(l) if l != self.id && m.state != ServerState::Leader => Some(l),
                _ => None,
            }
        };
        for _ in 0..FORWARD_ATTEMPTS {
            let index = match hint {
                None => self.local_read_index().await,
                Some(l) => self.shared_remote_read_index(l).await,
            };
            match index {
                Err(ProposeError::NotLeader(l)) => hint = Some(l),
                Err(e) => return Err(e),
                Ok(index) => return self.wait_applied(index).await,
            }
        }
        Err(ProposeError::NoLeader)
    }

    async fn remote_read_index(&self, leader: u64) -> Result<u64, ProposeError> {
        let (id, node) = self.leader_target(Some(leader))?;
        let resp = self
            .peers
            .call(id, &node, self.request_timeout, |mut c| async move {
                c.read_index(ReadIndexRequest {}).await
            })
            .await
            .map_err(|e| match e {
                PeerError::Timeout(_) => ProposeError::Timeout,
                other => ProposeError::LeaderUnreachable(other.to_string()),
            })?;
        if resp.error.is_empty() {
            Ok(resp.index)
        } else {
            Err(ProposeError::LeaderUnreachable(resp.error))
        }
    }

    pub(super) async fn wait_applied(&self, index: u64) -> Result<(), ProposeError> {
        let applied = self.state_machine.applied().map(|l| l.index).unwrap_or(0);
        if applied >= index {
            return Ok(());
        }
        match self
            .raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
        {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(ProposeError::Timeout),
            Err(openraft::metrics::WaitError::ShuttingDown) => Err(ProposeError::Stopped),
        }
    }

    async fn write_local(&self, op: Op) -> Result<Applied, ProposeError> {
        self.admit().await?;
        let op = match self.slots.try_direct(op).await {
            Ok(answer) => return answer,
            Err(op) => op,
        };
        self.enqueue(op)?.await.map_err(|_| ProposeError::Stopped)?
    }

    /// The checks a proposal passes before it goes into raft: it waits out a leadership
    /// transfer, and is refused while applying lags too far behind or while this leader has
    /// lost its quorum.
    async fn admit(&self) -> Result<(), ProposeError> {
        if *self.transferring.borrow() {
            // Held while leadership moves (bounded by the transfer's own deadline); afterwards
            // the proposal goes to whoever leads.
            let mut rx = self.transferring.subscribe();
            let _ = tokio::time::timeout(TRANSFER_HOLD_MAX, rx.wait_for(|t| !*t)).await;
        }
        self.check_apply_backlog()?;
        if self.liveness.is_quorum_lost()
            && self.raft.metrics().borrow().state == ServerState::Leader
        {
            // A leader without its quorum has stepped down as far as clients can tell.
            return Err(ProposeError::NoLeader);
        }
        Ok(())
    }

    /// Queues `op` for the next batch; its answer comes through the returned receiver.
    fn enqueue(
        &self,
        op: Op,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Applied, ProposeError>>, ProposeError> {
        use std::sync::atomic::Ordering;
        let size = op.size_hint();
        let queued = self.slots.queued();
        batch::reserve(queued, size)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.proposals.send((op, tx)).is_err() {
            queued.fetch_sub(size, Ordering::SeqCst);
            return Err(ProposeError::Stopped);
        }
        Ok(rx)
    }

    /// etcd's push-back: refuses a proposal while more than `max_apply_backlog` committed
    /// entries wait to be applied on this member.
    fn check_apply_backlog(&self) -> Result<(), ProposeError> {
        let committed = self.log.committed_index();
        let applied = self.state_machine.applied().map(|l| l.index).unwrap_or(0);
        if committed > applied.saturating_add(self.max_apply_backlog) {
            return Err(ProposeError::TooManyRequests);
        }
        Ok(())
    }

    /// The leader's read index through the follower's shared requests.
    async fn shared_remote_read_index(&self, leader: u64) -> Result<u64, ProposeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.remote_reads
            .send((leader, tx))
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    async fn local_read_index(&self) -> Result<u64, ProposeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reads.send(tx).map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    async fn change_membership_local(
        &self,
        op: MembershipOp,
    ) -> Result<MembershipResult, MembershipError> {
        let _guard = self.membership_lock.lock().await;
        if self.raft.metrics().borrow().state != ServerState::Leader {
            let leader = self.raft.metrics().borrow().current_leader;
            return Err(MembershipError::Propose(match leader {
                Some(l) if l != self.id => ProposeError::NotLeader(l),
                _ => ProposeError::NoLeader,
            }));
        }
        let ctx = membership::Ctx {
            raft: &self.raft,
            peers: &self.peers,
            self_id: self.id,
            token: &self.token,
            max_learners: self.max_learners,
            active_window: membership::ACTIVE_WINDOW,
            strict: self.strict,
            was_removed: &|id| self.state_machine.was_removed(id),
        };
        match tokio::time::timeout(self.request_timeout, ctx.apply(op)).await {
            Err(_) => Err(MembershipError::Propose(ProposeError::Timeout)),
            Ok(r) => r,
        }
    }

    fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            cluster_id: self.cluster_id,
            members: membership::members(&self.raft),
        }
    }

    fn node_of(&self, id: u64) -> Option<Member> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    fn leader_target(&self, hint: Option<u64>) -> Result<(u64, Member), ProposeError> {
        let leader = hint
            .or(self.raft.metrics().borrow().current_leader)
            .ok_or(ProposeError::NoLeader)?;
        let node = self.node_of(leader).ok_or(ProposeError::NoLeader)?;
        Ok((leader, node))
    }
}

/// A running raft member.
#[derive(Clone)]
pub struct RaftNode {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.shared.id)
            .finish()
    }
}

/// How many times a request follows a changing leader before giving up.
const FORWARD_ATTEMPTS: usize = 3;

impl RaftNode {
    /// Starts raft for member `id` over `storage`.
    pub async fn start(
        id: u64,
        storage: Storage,
        mvcc: Arc<Mvcc>,
        leases: Arc<Lessor>,
        auth: Arc<AuthStore>,
        alarms: Arc<crate::apply::Alarms>,
        settings: &RaftSettings,
    ) -> Result<RaftNode, StartError> {
        let heartbeat = settings.heartbeat.as_millis().max(1) as u64;
        let election = (settings.election.as_millis() as u64).max(heartbeat * 2);
        let config = Config {
            cluster_name: "oxcd".to_string(),
            heartbeat_interval: heartbeat,
            // A follower that knows a leader campaigns after openraft's leader lease (which is
            // `election_timeout_max`) plus a random time in [min, max) without hearing from it;
            // etcd campaigns after a random time in [election, 2 x election). With min = 0.4 e and
            // max = 0.6 e a follower campaigns after [1.0 e, 1.2 e), as soon as etcd's earliest.
            election_timeout_min: (election * 2 / 5).max(heartbeat + 1),
            election_timeout_max: (election * 3 / 5).max(heartbeat + 2),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_count.max(1)),
            max_in_snapshot_log_to_keep: 5000.min(settings.snapshot_count),
            max_payload_entries: 1024,
            // Elections are started by `elect::run` after a pre-vote, not by openraft's timer.
            enable_elect: false,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| StartError::Config(e.to_string()))?,
        );
        let log = LogStore::new(storage.clone()).map_err(|e| StartError::Storage(e.to_string()))?;
        let log_handle = log.clone();
        log.spawn_cache_release();
        let sm = StateMachine::open(storage, mvcc, leases.clone(), auth, alarms)
            .map_err(|e| StartError::Storage(e.to_string()))?;
        let peers = Peers::new(settings.max_message, settings.cluster_id);
        let network = PeerNetwork {
            peers: peers.clone(),
        };
        let raft = Raft::new(id, config, network, log, sm.clone())
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (election_timeout, heartbeat_interval) = (
            Duration::from_millis(election),
            Duration::from_millis(heartbeat),
        );
        let liveness =
            elect::Liveness::new(election_timeout, heartbeat_interval, settings.pre_vote);
        let slots = batch::Slots::new(
            raft.clone(),
            id,
            settings.request_timeout,
            liveness.quorum_lost(),
        );
        let lost_for_reads = liveness.quorum_lost();
        let (remote_reads, remote_reads_rx) = tokio::sync::mpsc::unbounded_channel();
        let node = RaftNode {
            shared: Arc::new_cyclic(|me| Shared {
                forwards: forward::Queue::start(me.clone()),
                reads: {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(batch::run_reads(
                        raft.clone(),
                        id,
                        settings.request_timeout,
                        rx,
                        lost_for_reads,
                    ));
                    tx
                },
                proposals: {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(batch::run(slots.clone(), rx));
                    tx
                },
                remote_reads,
                slots,
                transferring: tokio::sync::watch::Sender::new(false),
                log: log_handle,
                max_apply_backlog: settings.max_apply_backlog,
                raft,
                id,
                peers,
                request_timeout: settings.request_timeout,
                seen_self: std::sync::atomic::AtomicBool::new(sm.applied_membership_has(id)),
                state_machine: sm,
                cluster_id: settings.cluster_id,
                token: settings.token.clone(),
                max_learners: settings.max_learners,
                strict: settings.strict_reconfig_check,
                membership_lock: tokio::sync::Mutex::new(()),
                leases,
                lease_forward_timeout: settings.election.max(Duration::from_millis(100)),
                lease_confirmed: parking_lot::Mutex::new(None),
                liveness,
            }),
        };
        tokio::spawn(log_store::follow_membership(
            node.shared.log.clone(),
            node.shared.raft.server_metrics(),
            id,
        ));
        tokio::spawn(elect::run(Arc::downgrade(&node.shared)));
        tokio::spawn(batch::run_remote_reads(
            Arc::downgrade(&node.shared),
            remote_reads_rx,
        ));
        Ok(node)
    }

    /// The gRPC service other members call on this one.
    pub fn peer_service(&self, max_message: usize) -> PeerServer<PeerService> {
        PeerServer::new(PeerService {
            shared: self.shared.clone(),
        })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
    }

    /// Whether this member's raft state has ever been initialized (it has a log or a membership).
    pub async fn is_initialized(&self) -> Result<bool, StartError> {
        self.shared
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))
    }

    /// Forms a new cluster of `members`, unless this member's raft state already exists. Every
    /// initial member calls this with the same members, so their first log entries agree.
    pub async fn bootstrap_if_new(&self, members: BTreeMap<u64, Member>) -> Result<(), StartError> {
        if self.is_initialized().await? {
            return Ok(());
        }
        match self.shared.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another initial member formed the cluster first and this member already voted for
            // it or received its log: the cluster exists, and this member takes part in it.
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(reason = %e, "cluster already formed by another initial member");
                Ok(())
            }
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    /// Proposes `op` through the log (forwarding to the leader) and returns what applying it produced.
    pub async fn write(&self, op: Op) -> Result<Applied, ProposeError> {
        let (state, known_leader) = {
            let m = self.shared.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_leader)
        };
        let leading = state == ServerState::Leader && !*self.shared.transferring.borrow();
        if leading {
            // The common case proposes without keeping a copy of the op for forwarding (a
            // copy of every value). Should leadership go in the moment between this check
            // and openraft taking the proposal, openraft refuses it without appending it, and
            // the client is told the leader changed, as etcd tells it of a proposal dropped
            // by a change of leader.
            return match self.shared.write_local(op).await {
                Err(ProposeError::NotLeader(_)) => Err(ProposeError::LeaderChanged),
                other => other,
            };
        }
        // A follower that knows its leader forwards at once, after the apply-backlog check a
        // local attempt would make (a member that cannot keep up applying refuses, as etcd's
        // does, before anything is forwarded); a member that does not know its leader proposes
        // locally and follows the leader openraft names.
        let mut hint = match known_leader {
            Some(l) if state == ServerState::Follower && l != self.shared.id => {
                self.shared.check_apply_backlog()?;
                Some(l)
            }
            _ => None,
        };
        let op = Arc::new(op);
        for _ in 0..FORWARD_ATTEMPTS {
            let res = match hint {
                None => self.shared.write_local(Op::clone(&op)).await,
                Some(leader) => self.shared.forwards.forward(leader, op.clone()).await,
            };
            match res {
                Err(ProposeError::NotLeader(l)) => hint = Some(l),
                other => return other,
            }
        }
        Err(ProposeError::NoLeader)
    }

    /// Waits until a read of local state is linearizable: the leader confirms its leadership and
    /// hands out a read index, then this member waits until it has applied that index.
    pub async fn linearizable_barrier(&self) -> Result<(), ProposeError> {
        self.shared.linearizable_barrier().await
    }

    /// Asks any member at `peer_url` for the cluster's identity and members.
    pub async fn fetch_cluster_info(
        peer_url: &str,
        timeout: Duration,
    ) -> Result<ClusterInfo, PeerError> {
        let peers = Peers::new(16 * 1024 * 1024, 0);
        let node = Member {
            peer_urls: vec![peer_url.to_string()],
            ..Default::default()
        };
        let reply = peers
            .call(0, &node, timeout, |mut c| async move {
                c.cluster_info(ClusterInfoRequest {}).await
            })
            .await?;
        peer::decode(&reply)
    }

    /// Holds new proposals on this member until the returned guard drops (a leadership
    /// transfer), then waits until `target` has every entry of the leader's log, at most until
    /// `deadline`.
    pub async fn pause_for_transfer(
        &self,
        target: u64,
        deadline: tokio::time::Instant,
    ) -> TransferGuard {
        self.shared.transferring.send_replace(true);
        let guard = TransferGuard {
            shared: self.shared.clone(),
        };
        let mut metrics = self.shared.raft.metrics();
        loop {
            let caught_up = {
                let (matched, last) =
                    membership::replication_progress(&metrics.borrow_and_update(), target);
                matched >= last
            };
            if caught_up
                || tokio::time::timeout_at(deadline, metrics.changed())
                    .await
                    .map_or(true, |r| r.is_err())
            {
                break;
            }
        }
        guard
    }

    /// Asks member `target` to campaign now (etcd's MoveLeader).
    pub async fn ask_to_campaign(&self, target: u64) -> Result<(), PeerError> {
        let node = self
            .shared
            .node_of(target)
            .ok_or(PeerError::NoUrl(target))?;
        self.shared
            .peers
            .call(
                target,
                &node,
                self.shared.request_timeout,
                |mut c| async move { c.campaign(CampaignRequest {}).await },
            )
            .await
            .map(|_| ())
    }

    /// Member `target`'s key-value hash at `revision`: `Ok(Err(reason))` when it could not
    /// compute one (for instance it has not applied the revision yet).
    pub async fn peer_hash_kv(
        &self,
        target: u64,
        revision: i64,
    ) -> Result<Result<(u32, i64, i64), String>, PeerError> {
        let node = self
            .shared
            .node_of(target)
            .ok_or(PeerError::NoUrl(target))?;
        let reply = self
            .shared
            .peers
            .call(
                target,
                &node,
                self.shared.request_timeout,
                |mut c| async move { c.hash_kv(HashKvAt { revision }).await },
            )
            .await?;
        Ok(if reply.error.is_empty() {
            Ok((reply.hash, reply.compact_revision, reply.hash_revision))
        } else {
            Err(reply.error)
        })
    }
}

#[cfg(test)]
mod conformance;
