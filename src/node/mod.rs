//! The composition root: opens storage, restores or creates the member's identity, starts raft and
//! the leader-only tasks, and gives the servers one handle for proposing, reading and headers.
//!
//! Invariants:
//! - Identity is persistent: the member and cluster IDs are written to the data directory on first
//!   start and read back on every later start (flags do not change them).
//! - Every write is proposed through raft; reads are served from the local store, after a
//!   linearizable barrier unless the client asked for a serializable read.
//! - Auto-compaction runs only on the leader and proposes `Compact` like a client would.
//! - Lease expiry runs only on the leader and proposes `LeaseRevoke` (see [`lease`]).

pub mod bbolt;
mod compactor;
pub mod corrupt;
pub mod etcd_backup;
mod lease;
pub mod quota;
pub mod snapshot;

pub use lease::min_lease_ttl;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::apply::{restore_leases, Alarms, Applied, Op};
use crate::auth::AuthStore;
use crate::config::{ClusterState, Settings};
use crate::lease::{Lessor, SystemClock};
use crate::mvcc::Mvcc;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::raft::{MembershipOp, ProposeError, RaftNode, RaftSettings};
use crate::storage::{Batch, Cf, Storage, StorageError};
use crate::types::{ClusterId, Member, MemberId};

const KEY_IDENTITY: &[u8] = b"identity";

/// Largest peer message (raft batches and snapshot chunks), in bytes.
const MAX_PEER_MESSAGE: usize = 256 * 1024 * 1024;

/// Failures while starting a member.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage could not be opened or read.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Raft could not start.
    #[error(transparent)]
    Raft(#[from] crate::raft::StartError),
    /// The member cannot start with this configuration and data.
    #[error("{0}")]
    Refused(String),
    /// The stored identity could not be decoded.
    #[error("corrupt member identity in {0}")]
    CorruptIdentity(String),
    /// A peer listener could not be bound or served.
    #[error("peer listener: {0}")]
    Peer(String),
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
    /// Whether this member joined an existing cluster (it never bootstraps one).
    pub joined: bool,
}

/// A running member.
pub struct Node {
    /// Raft.
    pub raft: RaftNode,
    /// The multi-version store.
    pub mvcc: Arc<Mvcc>,
    /// The lease table.
    pub leases: Arc<Lessor>,
    /// The auth store.
    pub auth: Arc<AuthStore>,
    /// The alarm table.
    pub alarms: Arc<Alarms>,
    /// The counter behind this member's lease IDs.
    lease_ids: std::sync::atomic::AtomicU64,
    /// The member's storage.
    pub storage: Storage,
    /// The persistent identity.
    pub identity: Identity,
    /// The settings the member runs with.
    pub settings: Settings,
    size_cache: parking_lot::Mutex<quota::SizeCache>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    peer_stop: parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
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

fn save_identity(storage: &Storage, id: &Identity) -> Result<(), NodeError> {
    let mut b = Batch::new();
    let raw = bincode::serialize(id).map_err(|e| NodeError::CorruptIdentity(e.to_string()))?;
    b.put(Cf::RaftMeta, KEY_IDENTITY.to_vec(), raw);
    storage.write(b, true)?;
    Ok(())
}

fn same_urls(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

/// Finds this member in an existing cluster by its peer URLs, asking the other initial members.
async fn join_identity(settings: &Settings) -> Result<Identity, NodeError> {
    let others: Vec<&String> = settings
        .initial_cluster
        .iter()
        .filter(|(name, _)| name != &settings.name)
        .flat_map(|(_, urls)| urls.iter())
        .collect();
    if others.is_empty() {
        return Err(NodeError::Refused(
            "--initial-cluster-state=existing needs the other members in --initial-cluster"
                .to_string(),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last_err = String::new();
    while tokio::time::Instant::now() < deadline {
        for url in &others {
            match RaftNode::fetch_cluster_info(url, Duration::from_secs(2)).await {
                Ok(info) => {
                    let me = info
                        .members
                        .iter()
                        .find(|m| same_urls(&m.member.peer_urls, &settings.advertise_peer_urls));
                    if let Some(m) = me {
                        tracing::info!(
                            member_id = %format!("{:x}", m.id),
                            from = %url,
                            "found this member in the existing cluster"
                        );
                    }
                    return match me {
                        Some(m) => Ok(Identity {
                            member_id: MemberId(m.id),
                            cluster_id: ClusterId(info.cluster_id),
                            name: settings.name.clone(),
                            joined: true,
                        }),
                        None => Err(NodeError::Refused(format!(
                            "no member with peer URLs {} in the cluster at {url}; add it first (etcdctl member add {} --peer-urls={})",
                            settings.advertise_peer_urls.join(","),
                            settings.name,
                            settings.advertise_peer_urls.join(",")
                        ))),
                    };
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(NodeError::Refused(format!(
        "could not reach any member of the existing cluster: {last_err}"
    )))
}

/// The identity saved in `data_dir`, without starting the member: `None` when the directory
/// holds no member (no database, or a database whose identity was never saved).
pub fn stored_identity(data_dir: &std::path::Path) -> Result<Option<Identity>, NodeError> {
    let path = db_path(data_dir);
    if !path.exists() {
        return Ok(None);
    }
    let storage = Storage::open(&path)?;
    load_identity(&storage)
}

/// Where a member keeps its RocksDB inside its data directory.
pub fn db_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("member").join("rocksdb")
}

impl Node {
    /// Starts the member described by `settings`.
    pub async fn start(settings: Settings) -> Result<Arc<Node>, NodeError> {
        let peer_listeners = {
            let mut out = Vec::new();
            for &addr in &settings.listen_peer {
                out.push(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| NodeError::Peer(format!("listen on {addr}: {e}")))?,
                );
            }
            out
        };
        let db_path = db_path(&settings.data_dir);
        let is_new = !db_path.exists();
        let joining_identity = if is_new && settings.cluster_state == ClusterState::Existing {
            Some(join_identity(&settings).await?)
        } else {
            None
        };
        let storage = Storage::open(&db_path)?;
        let computed_id = MemberId::compute(&settings.advertise_peer_urls, &settings.token);
        let identity = match load_identity(&storage)? {
            Some(id) => {
                if id.member_id != computed_id && !id.joined {
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
                let id = match joining_identity {
                    Some(id) => id,
                    None => {
                        let members: Vec<MemberId> = settings
                            .initial_cluster
                            .iter()
                            .map(|(_, urls)| MemberId::compute(urls, &settings.token))
                            .collect();
                        Identity {
                            member_id: computed_id,
                            cluster_id: ClusterId::compute(&members),
                            name: settings.name.clone(),
                            joined: false,
                        }
                    }
                };
                save_identity(&storage, &id)?;
                id
            }
        };
        tracing::info!(
            member_id = %identity.member_id,
            cluster_id = %identity.cluster_id,
            data_dir = %settings.data_dir.display(),
            "starting member"
        );
        if let Some(id) = crate::raft::StateMachine::repair_at_start(&storage)
            .map_err(|e| NodeError::Refused(e.to_string()))?
        {
            tracing::warn!(snapshot_id = %id, "finished a snapshot install that a crash had interrupted");
        }
        let mvcc = Mvcc::open_with(storage.clone(), settings.compaction_batch_limit)?;
        let leases = Arc::new(Lessor::open(storage.clone(), Arc::new(SystemClock))?);
        restore_leases(&leases, &mvcc)?;
        let mut auth = AuthStore::open(storage.clone(), settings.auth_token_ttl)?;
        if let Some(o) = &settings.auth_jwt {
            let jwt = crate::auth::jwt::Jwt::load(o)
                .map_err(|e| NodeError::Refused(format!("--auth-token: {e}")))?;
            auth = auth.with_jwt(jwt);
        }
        let auth = Arc::new(auth);
        let alarms = Arc::new(Alarms::open(storage.clone())?);
        let raft_settings = RaftSettings {
            heartbeat: settings.heartbeat,
            election: settings.election,
            snapshot_count: settings.snapshot_count,
            request_timeout: Duration::from_secs(5) + 2 * settings.election,
            cluster_id: identity.cluster_id.0,
            token: settings.token.clone(),
            max_learners: settings.max_learners,
            strict_reconfig_check: settings.strict_reconfig_check,
            pre_vote: settings.pre_vote,
            max_message: MAX_PEER_MESSAGE,
            max_apply_backlog: settings.max_apply_backlog,
        };
        let raft = RaftNode::start(
            identity.member_id.0,
            storage.clone(),
            mvcc.clone(),
            leases.clone(),
            auth.clone(),
            alarms.clone(),
            &raft_settings,
        )
        .await?;
        if raft.is_removed() {
            raft.shutdown().await;
            return Err(NodeError::Refused(format!(
                "the member {} has been permanently removed from the cluster; remove its data directory {} to add it again as a new member",
                identity.member_id,
                settings.data_dir.display()
            )));
        }
        // Peer TLS: the acceptor for https peer listeners, and the connector for https peer URLs.
        let peer_dir = settings.data_dir.join("fixtures").join("peer");
        let peer_hosts = crate::tls::hosts_of(&settings.advertise_peer_urls);
        let peer_acceptor = if settings.listen_peer_tls {
            let config = crate::tls::server_config(
                &settings.peer_tls,
                &peer_dir,
                &peer_hosts,
                "peer-",
                &[b"h2"],
            )
            .map_err(|e| NodeError::Peer(e.to_string()))?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        } else {
            None
        };
        if settings.peer_tls.has_identity() || settings.peer_tls.trusted_ca_file.is_some() {
            let config = crate::tls::peer_client_config(&settings.peer_tls, &peer_dir, &peer_hosts)
                .map_err(|e| NodeError::Peer(e.to_string()))?;
            crate::tls::set_peer_client(config);
        }
        // Serve peers before bootstrapping: the other initial members must be able to reach us.
        let (peer_stop, peer_stopped) = tokio::sync::oneshot::channel::<()>();
        let peer_svc = raft.peer_service(MAX_PEER_MESSAGE);
        let stop_all = futures::future::FutureExt::shared(async move {
            let _ = peer_stopped.await;
        });
        for l in peer_listeners {
            let router = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(peer_svc.clone());
            let stop = stop_all.clone();
            match &peer_acceptor {
                None => {
                    tokio::spawn(async move {
                        // TCP_NODELAY on accepted peer sockets (tonic sets it only on listeners
                        // it binds).
                        let incoming =
                            tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
                        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
                            tracing::error!(error = %e, "peer server stopped");
                        }
                    });
                }
                Some(acceptor) => {
                    let incoming = tls_incoming(l, acceptor.clone());
                    tokio::spawn(async move {
                        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
                            tracing::error!(error = %e, "peer server stopped");
                        }
                    });
                }
            }
        }
        if !identity.joined {
            let members: BTreeMap<u64, Member> = settings
                .initial_cluster
                .iter()
                .map(|(name, urls)| {
                    (
                        MemberId::compute(urls, &settings.token).0,
                        Member {
                            name: name.clone(),
                            peer_urls: urls.clone(),
                            client_urls: Vec::new(),
                        },
                    )
                })
                .collect();
            raft.bootstrap_if_new(members).await?;
        }
        let node = Arc::new(Node {
            raft,
            mvcc,
            leases,
            auth,
            alarms,
            lease_ids: std::sync::atomic::AtomicU64::new(lease::lease_id_seed()),
            storage,
            identity,
            settings,
            size_cache: parking_lot::Mutex::new(quota::SizeCache::default()),
            tasks: parking_lot::Mutex::new(Vec::new()),
            peer_stop: parking_lot::Mutex::new(Some(peer_stop)),
        });
        let publisher = tokio::spawn(publish(node.clone()));
        node.tasks.lock().push(publisher);
        let leader_watch = tokio::spawn(quota::watch_leader(node.clone()));
        node.tasks.lock().push(leader_watch);
        let disk = tokio::spawn(quota::guard_disk(node.clone()));
        node.tasks.lock().push(disk);
        let expiry = tokio::spawn(lease::run(node.clone()));
        node.tasks.lock().push(expiry);
        if let Some(interval) = node.settings.corrupt_check_interval {
            let handle = tokio::spawn(corrupt::run(node.clone(), interval));
            node.tasks.lock().push(handle);
        }
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
        /// Counts a proposal as pending until it is done or abandoned.
        struct Pending;
        impl Drop for Pending {
            fn drop(&mut self) {
                crate::metrics::get().proposals_pending.dec();
            }
        }
        crate::metrics::get().proposals_pending.inc();
        let _pending = Pending;
        let out = self.raft.write(op).await;
        if out.is_err() {
            crate::metrics::get().proposals_failed.inc();
        }
        out
    }

    /// Waits until local reads are linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), ProposeError> {
        let out = self.raft.linearizable_barrier().await;
        if out.is_err() {
            crate::metrics::get().read_indexes_failed.inc();
        }
        out
    }

    /// Stops the background tasks, the peer server and raft, then quiesces storage for exit.
    pub async fn shutdown(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        if let Some(stop) = self.peer_stop.lock().take() {
            let _ = stop.send(());
        }
        self.raft.shutdown().await;
        if let Err(e) = self.storage.quiesce() {
            tracing::error!(error = %e, "flushing storage at shutdown");
        }
        tracing::info!("member stopped");
    }
}

/// Accepted peer connections after their TLS handshake (a failed or slow handshake drops only
/// that connection).
fn tls_incoming(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                if let Some(tls) = crate::tls::accept(&acceptor, stream, "peer").await {
                    let _ = conn_tx.send(Ok(tls)).await;
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Publishes this member's name and client URLs into the membership (etcd shows members that have
/// not done so as `unstarted`), retrying until it succeeds.
async fn publish(node: Arc<Node>) {
    let id = node.identity.member_id.0;
    let mut backoff = Duration::from_millis(50);
    loop {
        let current = node.raft.members().into_iter().find(|m| m.id == id);
        let done = current.as_ref().is_some_and(|m| {
            m.member.name == node.settings.name
                && m.member.client_urls == node.settings.advertise_client_urls
        });
        if done {
            return;
        }
        if current.is_some() {
            let op = MembershipOp::Publish {
                id,
                name: node.settings.name.clone(),
                client_urls: node.settings.advertise_client_urls.clone(),
            };
            match node.raft.change_membership(op).await {
                Ok(_) => {
                    tracing::info!(name = %node.settings.name, "published member attributes");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
