//! The only user of openraft: the type configuration, the log store, the state machine glue and the
//! peer network. Outside this module only concrete types ([`RaftNode`], [`ProposeError`]) are used.
//!
//! Invariants:
//! - Every write goes through [`RaftNode::write`], i.e. through the log; there is no other path.
//! - [`RaftNode::linearizable_barrier`] returns only once this member is confirmed leader for the
//!   current term and its state machine has applied everything committed before the call.

mod log_store;
mod network;
mod state_machine;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};

pub use log_store::LogStore;
pub use network::PeerNetwork;
pub use state_machine::StateMachine;

use crate::apply::{Applied, Op};
use crate::mvcc::Mvcc;
use crate::storage::Storage;
use crate::types::Member;

openraft::declare_raft_types!(
    /// oxcd's openraft type configuration: etcd member IDs as node IDs, [`Op`] as log payload.
    pub TypeConfig:
        D = Op,
        R = Applied,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Why a proposal or a linearizable read did not complete.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
}

/// A running raft member.
#[derive(Clone)]
pub struct RaftNode {
    raft: Raft<TypeConfig>,
    id: u64,
    request_timeout: Duration,
    state_machine: StateMachine,
}

impl RaftNode {
    /// Starts raft for member `id` over `storage`.
    pub async fn start(
        id: u64,
        storage: Storage,
        mvcc: Arc<Mvcc>,
        settings: &RaftSettings,
    ) -> Result<RaftNode, StartError> {
        let heartbeat = settings.heartbeat.as_millis().max(1) as u64;
        let election = (settings.election.as_millis() as u64).max(heartbeat * 2);
        let config = Config {
            cluster_name: "oxcd".to_string(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_count.max(1)),
            max_in_snapshot_log_to_keep: 5000,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| StartError::Config(e.to_string()))?,
        );
        let log = LogStore::new(storage.clone()).map_err(|e| StartError::Storage(e.to_string()))?;
        let sm =
            StateMachine::open(storage, mvcc).map_err(|e| StartError::Storage(e.to_string()))?;
        let raft = Raft::new(id, config, PeerNetwork, log, sm.clone())
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        Ok(RaftNode {
            raft,
            id,
            request_timeout: settings.request_timeout,
            state_machine: sm,
        })
    }

    /// Makes this member the sole voter of a new group, unless the group already exists.
    pub async fn bootstrap_if_new(&self, members: BTreeMap<u64, Member>) -> Result<(), StartError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if !initialized {
            self.raft
                .initialize(members)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
        }
        Ok(())
    }

    /// Proposes `op` through the log and returns what applying it produced.
    pub async fn write(&self, op: Op) -> Result<Applied, ProposeError> {
        let fut = self.raft.client_write(op);
        match tokio::time::timeout(self.request_timeout, fut).await {
            Err(_) => Err(ProposeError::Timeout),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => match f.leader_id
            {
                Some(l) if l != self.id => Err(ProposeError::NotLeader(l)),
                _ => Err(ProposeError::NoLeader),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(_)))) => {
                Err(ProposeError::NoLeader)
            }
            Ok(Err(RaftError::Fatal(_))) => Err(ProposeError::Stopped),
        }
    }

    /// Waits until a read of local state is linearizable (read index, then apply).
    pub async fn linearizable_barrier(&self) -> Result<(), ProposeError> {
        let fut = self.raft.ensure_linearizable();
        match tokio::time::timeout(self.request_timeout, fut).await {
            Err(_) => Err(ProposeError::Timeout),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => match f.leader_id {
                Some(l) if l != self.id => Err(ProposeError::NotLeader(l)),
                _ => Err(ProposeError::NoLeader),
            },
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(
                _,
            )))) => Err(ProposeError::NoLeader),
            Ok(Err(RaftError::Fatal(_))) => Err(ProposeError::Stopped),
        }
    }

    /// Waits until some member is leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ProposeError> {
        let res = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader elected")
            .await;
        match res {
            Ok(m) => m.current_leader.ok_or(ProposeError::NoLeader),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(ProposeError::NoLeader),
            Err(openraft::metrics::WaitError::ShuttingDown) => Err(ProposeError::Stopped),
        }
    }

    /// The current raft term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The index of the last log entry.
    pub fn last_log_index(&self) -> u64 {
        self.raft.metrics().borrow().last_log_index.unwrap_or(0)
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.state_machine.applied().map(|l| l.index).unwrap_or(0)
    }

    /// Resolves when raft stops, with the reason when it stopped on an error.
    pub async fn stopped(&self) -> Option<String> {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow().running_state {
                return Some(e.to_string());
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Stops raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

#[cfg(test)]
mod conformance {
    //! openraft's storage conformance suite against the RocksDB log store and state machine.

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{AnyError, StorageError, StorageIOError};

    use super::{LogStore, StateMachine, TypeConfig};
    use crate::mvcc::Mvcc;
    use crate::storage::Storage;

    struct Builder;

    fn err(e: impl std::error::Error + 'static) -> StorageError<u64> {
        StorageIOError::write_logs(AnyError::new(&e)).into()
    }

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().map_err(err)?;
            let storage = Storage::open(dir.path()).map_err(err)?;
            let mvcc = Mvcc::open(storage.clone()).map_err(err)?;
            let log = LogStore::new(storage.clone()).map_err(err)?;
            let sm = StateMachine::open(storage, mvcc)?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
        Suite::test_all(Builder)
    }
}
