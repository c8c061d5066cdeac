//! The composition root: opens storage, restores or creates the member's identity, starts raft and
//! the leader-only tasks, and gives the servers one handle for proposing, reading and headers.
//!
//! Invariants:
//! - Identity is persistent: the member and cluster IDs are written to the data directory on first
//!   start and read back on every later start (flags do not change them).
//! - Every write is proposed through raft; reads are served from the local store, after a
//!   linearizable barrier unless the client asked for a serializable read.
//! - Auto-compaction runs only on the leader and proposes `Compact` like a client would.

mod compactor;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::apply::{Applied, Op};
use crate::config::{ClusterState, Settings};
use crate::mvcc::Mvcc;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::raft::{ProposeError, RaftNode, RaftSettings};
use crate::storage::{Batch, Cf, Storage, StorageError};
use crate::types::{ClusterId, Member, MemberId};

const KEY_IDENTITY: &[u8] = b"identity";

/// Failures while starting a member.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage could not be opened or read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Raft could not start.
    #[error(transparent)]
    Raft(#[from] crate::raft::StartError),
    /// The configuration asks for something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The stored identity could not be decoded.
    #[error("corrupt member identity in {0}")]
    CorruptIdentity(String),
}

/// The member's persistent identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// This member's ID.
    pub member_id: MemberId,
    /// The cluster's ID.
    pub cluster_id: ClusterId,
    /// The name the member was created with.
    pub name: String,
}

/// A running member.
pub struct Node {
    /// Raft.
    pub raft: RaftNode,
    /// The multi-version store.
    pub mvcc: Arc<Mvcc>,
    /// The member's storage.
    pub storage: Storage,
    /// The persistent identity.
    pub identity: Identity,
    /// The settings the member runs with.
    pub settings: Settings,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", &self.identity)
            .finish()
    }
}

fn load_identity(storage: &Storage) -> Result<Option<Identity>, NodeError> {
    match storage.get(Cf::RaftMeta, KEY_IDENTITY)? {
        None => Ok(None),
        Some(raw) => bincode::deserialize(&raw)
            .map(Some)
            .map_err(|e| NodeError::CorruptIdentity(e.to_string())),
    }
}

impl Node {
    /// Starts the member described by `settings`.
    pub async fn start(settings: Settings) -> Result<Arc<Node>, NodeError> {
        if settings.initial_cluster.len() > 1 {
            return Err(NodeError::Unsupported(format!(
                "--initial-cluster names {} members; this build runs single-member clusters only",
                settings.initial_cluster.len()
            )));
        }
        let db_path = settings.data_dir.join("member").join("rocksdb");
        let is_new = !db_path.exists();
        if is_new && settings.cluster_state == ClusterState::Existing {
            return Err(NodeError::Unsupported(
                "--initial-cluster-state=existing needs a cluster to join; this build runs single-member clusters only"
                    .to_string(),
            ));
        }
        let storage = Storage::open(&db_path)?;
        let computed_id = MemberId::compute(&settings.advertise_peer_urls, &settings.token);
        let identity = match load_identity(&storage)? {
            Some(id) => {
                if id.member_id != computed_id {
                    tracing::warn!(
                        stored = %id.member_id,
                        from_flags = %computed_id,
                        "data directory belongs to member {}; keeping its identity",
                        id.member_id
                    );
                }
                id
            }
            None => {
                let members: Vec<MemberId> = settings
                    .initial_cluster
                    .iter()
                    .map(|(_, urls)| MemberId::compute(urls, &settings.token))
                    .collect();
                let id = Identity {
                    member_id: computed_id,
                    cluster_id: ClusterId::compute(&members),
                    name: settings.name.clone(),
                };
                let mut b = Batch::new();
                let raw = bincode::serialize(&id)
                    .map_err(|e| NodeError::CorruptIdentity(e.to_string()))?;
                b.put(Cf::RaftMeta, KEY_IDENTITY.to_vec(), raw);
                storage.write(b, true)?;
                id
            }
        };
        tracing::info!(
            member_id = %identity.member_id,
            cluster_id = %identity.cluster_id,
            data_dir = %settings.data_dir.display(),
            "starting member"
        );
        let mvcc = Mvcc::open(storage.clone())?;
        let raft_settings = RaftSettings {
            heartbeat: settings.heartbeat,
            election: settings.election,
            snapshot_count: settings.snapshot_count,
            request_timeout: Duration::from_secs(5) + 2 * settings.election,
        };
        let raft = RaftNode::start(
            identity.member_id.0,
            storage.clone(),
            mvcc.clone(),
            &raft_settings,
        )
        .await?;
        let me = Member {
            name: settings.name.clone(),
            peer_urls: settings.advertise_peer_urls.clone(),
            client_urls: settings.advertise_client_urls.clone(),
        };
        raft.bootstrap_if_new(BTreeMap::from([(identity.member_id.0, me)]))
            .await?;
        let node = Arc::new(Node {
            raft,
            mvcc,
            storage,
            identity,
            settings,
            tasks: parking_lot::Mutex::new(Vec::new()),
        });
        if let Some(policy) = node.settings.auto_compaction {
            let handle = tokio::spawn(compactor::run(node.clone(), policy));
            node.tasks.lock().push(handle);
        }
        Ok(node)
    }

    /// A response header for a top-level response at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.identity.cluster_id.0,
            member_id: self.identity.member_id.0,
            revision,
            raft_term: self.raft.term(),
        }
    }

    /// Proposes `op` through the log.
    pub async fn propose(&self, op: Op) -> Result<Applied, ProposeError> {
        self.raft.write(op).await
    }

    /// Waits until local reads are linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), ProposeError> {
        self.raft.linearizable_barrier().await
    }

    /// Stops the leader-only tasks and raft.
    pub async fn shutdown(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.raft.shutdown().await;
    }
}
