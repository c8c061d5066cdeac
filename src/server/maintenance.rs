//! etcd's Maintenance service: Status, Hash, HashKV, MoveLeader, Defragment, Alarm and Snapshot.
//! Downgrade answers `Unimplemented` (oxcd has no older storage version to go back to).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::error::EtcdError;
use super::{access, guard};

use crate::apply::{Applied, Op, Pb};
use crate::node::Node;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};

/// The admin check of etcd's maintenance service, which (unlike every other service) returns
/// the auth store's error unconverted: code Unknown, text `auth: ...`.
async fn maintenance_admin<T>(node: &Node, req: &Request<T>) -> Result<(), Status> {
    let unconverted = |e: EtcdError| match e {
        EtcdError::Auth(a) => Status::unknown(format!("auth: {a}")),
        other => other.into(),
    };
    let c = access::caller(node, req).await.map_err(unconverted)?;
    access::admin(node, c.as_ref()).map_err(unconverted)
}

/// A file deleted when dropped (a backup streamed to a client).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The size of a snapshot stream's messages, as etcd's.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// An alarm as etcd's Status lists it among `errors` (the alarm member's text form).
fn alarm_text(a: &AlarmMember) -> String {
    let name = AlarmType::try_from(a.alarm)
        .map(|t| t.as_str_name())
        .unwrap_or("NONE");
    format!("memberID:{} alarm:{} ", a.member_id, name)
}

/// The Maintenance service.
#[derive(Clone, Debug)]
pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    /// A Maintenance service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }

    fn header(&self) -> Option<crate::proto::etcdserverpb::ResponseHeader> {
        Some(self.node.header(self.node.mvcc.current_revision()))
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let r = request.into_inner();
        match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => Ok(Response::new(AlarmResponse {
                header: self.header(),
                alarms: self.node.alarms.list(),
            })),
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                match self
                    .node
                    .propose(Op::Alarm(Pb(r)))
                    .await
                    .map_err(EtcdError::from)?
                {
                    Applied::Alarm(Pb(mut resp)) => {
                        resp.header = self.header();
                        Ok(Response::new(resp))
                    }
                    Applied::Failed(e) => Err(EtcdError::from(e).into()),
                    other => {
                        tracing::error!(?other, "apply returned a result of the wrong kind");
                        Err(Status::internal("unexpected apply result"))
                    }
                }
            }
            Err(_) => Err(Status::invalid_argument(format!(
                "unknown alarm action {}",
                r.action
            ))),
        }
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        guard::require_leader(&self.node, &request)?;
        let node = &self.node;
        let (size, in_use) = node.db_size().map_err(EtcdError::from)?;
        let leader = node.raft.known_leader();
        let mut errors = Vec::new();
        if leader.is_none() {
            errors.push(EtcdError::NoLeader.to_string());
        }
        for a in node.alarms.list() {
            errors.push(alarm_text(&a));
        }
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: crate::REPORTED_ETCD_VERSION.to_string(),
            db_size: size as i64,
            leader: leader.unwrap_or(0),
            raft_index: node.raft.last_log_index(),
            raft_term: node.raft.term(),
            raft_applied_index: node.raft.applied_index(),
            errors,
            db_size_in_use: in_use as i64,
            is_learner: node.raft.is_learner(),
            storage_version: String::new(),
            db_size_quota: node.settings.quota_backend_bytes,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        maintenance_admin(&self.node, &request).await?;
        // Compactions delete their rows in the background; a defragment right after
        // `etcdctl compact` first lets them finish, so it frees what the user expects.
        let compacted = self.node.mvcc.compacted_revision();
        self.node.mvcc.wait_compacted(compacted).await;
        let storage = self.node.storage.clone();
        let m = crate::metrics::get();
        m.defrag_inflight.set(1);
        let started = std::time::Instant::now();
        let done = tokio::task::spawn_blocking(move || storage.compact_all()).await;
        m.defrag_inflight.set(0);
        m.defrag_duration.observe(started.elapsed().as_secs_f64());
        done.map_err(|e| Status::internal(e.to_string()))?
            .map_err(EtcdError::from)?;
        if let Ok((size, _)) = self.node.db_size() {
            tracing::info!(db_size = size, "defragmented the backend");
        }
        // etcd answers a defragment without a header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        maintenance_admin(&self.node, &request).await?;
        let (hash, _, _) = self
            .node
            .mvcc
            .blocking(|m| m.hash_kv(0))
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(HashResponse {
            header: self.header(),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        maintenance_admin(&self.node, &request).await?;
        let at = request.get_ref().revision;
        let (hash, compact_revision, hash_revision) = self
            .node
            .mvcc
            .blocking(move |m| m.hash_kv(at))
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(HashKvResponse {
            header: self.header(),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        maintenance_admin(&self.node, &request).await?;
        let mvcc = self.node.mvcc.clone();
        let started = std::time::Instant::now();
        // The file is written beside the raft snapshots, then streamed from disk and deleted:
        // memory holds one chunk, whatever the database's size.
        let dir = crate::raft::snapshot_store::snap_dir(&self.node.storage);
        let path = dir.join(format!(
            "backup-{}.tmp",
            crate::raft::snapshot_store::nanos()
        ));
        let file = TempFile(path.clone());
        let total = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))
                .and_then(|()| {
                    crate::node::etcd_backup::export_to(&mvcc, &path).map_err(|e| e.to_string())
                })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("etcdserver: snapshot: {e}")))?;
        crate::metrics::get()
            .snapshot_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(bytes = total, "sending a snapshot to a client");
        // etcd's stream: the database in chunks (remaining_bytes counts what follows each chunk),
        // then the sha256 of the database as the last message. The file carries the same
        // checksum as its last 32 bytes, so the chunks are the file itself.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<SnapshotResponse, Status>>(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let file_guard = file;
            let mut f = match std::fs::File::open(&file_guard.0) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx
                        .blocking_send(Err(Status::internal(format!("etcdserver: snapshot: {e}"))));
                    return;
                }
            };
            let mut sent = 0u64;
            while sent < total {
                let mut blob = vec![0u8; SNAPSHOT_CHUNK.min((total - sent) as usize)];
                if let Err(e) = f.read_exact(&mut blob) {
                    let _ = tx
                        .blocking_send(Err(Status::internal(format!("etcdserver: snapshot: {e}"))));
                    return;
                }
                sent += blob.len() as u64;
                let msg = SnapshotResponse {
                    header: None,
                    remaining_bytes: total - sent,
                    blob,
                    version: String::new(),
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    // The client went away.
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        maintenance_admin(&self.node, &request).await?;
        let target = request.get_ref().target_id;
        let raft = &self.node.raft;
        if !raft.is_leader() {
            return Err(EtcdError::NotLeader.into());
        }
        let is_voter = raft
            .members()
            .iter()
            .any(|m| m.id == target && !m.is_learner);
        if !is_voter {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        if target != raft.id() {
            let deadline = tokio::time::Instant::now()
                + 4 * self.node.settings.election
                + Duration::from_secs(1);
            // As etcd, new proposals wait during the transfer, and the transferee is asked to
            // campaign once it has the leader's whole log (else the members refuse their votes).
            // Proposals are held for at most two election timeouts (etcd drops them for one),
            // so a transfer that fails costs writes no longer than that.
            let held_until = tokio::time::Instant::now() + 2 * self.node.settings.election;
            let mut held = Some(
                raft.pause_for_transfer(
                    target,
                    tokio::time::Instant::now() + self.node.settings.election,
                )
                .await,
            );
            raft.ask_to_campaign(target)
                .await
                .map_err(|_| EtcdError::BadLeaderTransferee)?;
            let mut metrics = raft.leader_changes();
            // A campaign can lose to the members' leader lease (openraft refuses votes for a
            // while after an election); the transferee is asked again every election timeout
            // until it leads or the deadline passes.
            let election = self.node.settings.election;
            let mut next_ask = tokio::time::Instant::now() + election;
            while raft.leader() != Some(target) {
                let now = tokio::time::Instant::now();
                if held.is_some() && (!raft.is_leader() || now >= held_until) {
                    held = None;
                }
                if now >= next_ask {
                    next_ask = now + election;
                    if let Err(e) = raft.ask_to_campaign(target).await {
                        tracing::debug!(error = %e, "asking the transferee to campaign again");
                    }
                }
                // While proposals are held, wake in time to release them (held_until comes
                // before the deadline), and in time to ask again.
                let wake = if held.is_some() { held_until } else { deadline }.min(next_ask);
                match tokio::time::timeout_at(wake, metrics.changed()).await {
                    Ok(Ok(())) => {}
                    Err(_) if tokio::time::Instant::now() < deadline => {}
                    Ok(Err(_)) | Err(_) => return Err(EtcdError::Timeout.into()),
                }
            }
            drop(held);
        }
        // etcd answers MoveLeader without a header.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    /// etcd 3.5's Downgrade, checks in etcd's order. VALIDATE changes nothing; ENABLE and
    /// CANCEL are proposed and answer once applied (etcd 3.5.x applies them but never answers,
    /// so its clients see a timeout). Every answer carries the cluster version, which a job does
    /// not change while every member runs this version. Unlike etcd 3.5.1 (which checks no
    /// permission here), it needs the root role under auth, as etcd 3.5.28 and 3.6 do.
    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        use crate::apply::downgrade::{parse_cluster_version, DowngradeInfo, CLUSTER_VERSION};
        use crate::proto::etcdserverpb::downgrade_request::DowngradeAction;
        guard::voter_rpc(&self.node, &request)?;
        maintenance_admin(&self.node, &request).await?;
        let r = request.into_inner();
        let action = DowngradeAction::try_from(r.action).map_err(|_| EtcdError::UnknownMethod)?;
        let version = format!("{}.{}.0", CLUSTER_VERSION.0, CLUSTER_VERSION.1);
        let propose = |op: Op| async move {
            match self.node.propose(op).await.map_err(EtcdError::from)? {
                Applied::Downgrade => Ok(()),
                Applied::Failed(f) => Err(Status::from(EtcdError::from(f))),
                other => Err(Status::internal(format!("downgrade applied as {other:?}"))),
            }
        };
        match action {
            DowngradeAction::Validate | DowngradeAction::Enable => {
                let target = parse_cluster_version(&r.version)
                    .ok_or(EtcdError::WrongDowngradeVersionFormat)?;
                self.node
                    .linearizable_barrier()
                    .await
                    .map_err(EtcdError::from)?;
                if target != (CLUSTER_VERSION.0, CLUSTER_VERSION.1.saturating_sub(1)) {
                    return Err(EtcdError::InvalidDowngradeTargetVersion.into());
                }
                if DowngradeInfo::read(&self.node.storage).enabled {
                    return Err(EtcdError::DowngradeInProcess.into());
                }
                if action == DowngradeAction::Enable {
                    propose(Op::Downgrade {
                        enabled: true,
                        target: format!("{}.{}.0", target.0, target.1),
                    })
                    .await?;
                    tracing::info!(target = %format!("{}.{}.0", target.0, target.1), "downgrade enabled");
                }
            }
            DowngradeAction::Cancel => {
                self.node
                    .linearizable_barrier()
                    .await
                    .map_err(EtcdError::from)?;
                if !DowngradeInfo::read(&self.node.storage).enabled {
                    return Err(EtcdError::NoInflightDowngrade.into());
                }
                propose(Op::Downgrade {
                    enabled: false,
                    target: String::new(),
                })
                .await?;
                tracing::info!("downgrade cancelled");
            }
        }
        Ok(Response::new(DowngradeResponse {
            header: self.header(),
            version,
        }))
    }
}
