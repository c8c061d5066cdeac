//! etcd's Maintenance service: Status, Hash, HashKV, MoveLeader, Defragment and Alarm (list).
//! Snapshot and Downgrade answer `Unimplemented` until they are built.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::error::EtcdError;
use super::{access, guard};

use crate::node::Node;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
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

/// The etcd server version oxcd reports (its API level).
pub const REPORTED_VERSION: &str = "3.5.0";

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
        match AlarmAction::try_from(request.get_ref().action) {
            Ok(AlarmAction::Get) => Ok(Response::new(AlarmResponse {
                header: self.header(),
                // No alarm can be raised yet: the space quota and corruption checks are not built.
                alarms: Vec::new(),
            })),
            _ => Err(Status::unimplemented(
                "oxcd: raising and disarming alarms is not implemented yet",
            )),
        }
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        guard::require_leader(&self.node, &request)?;
        let node = &self.node;
        let size = node.storage.size_on_disk().map_err(EtcdError::from)? as i64;
        let leader = node.raft.leader();
        let mut errors = Vec::new();
        if leader.is_none() {
            errors.push(EtcdError::NoLeader.to_string());
        }
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: REPORTED_VERSION.to_string(),
            db_size: size,
            leader: leader.unwrap_or(0),
            raft_index: node.raft.last_log_index(),
            raft_term: node.raft.term(),
            raft_applied_index: node.raft.applied_index(),
            errors,
            db_size_in_use: size,
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
        let storage = self.node.storage.clone();
        tokio::task::spawn_blocking(move || storage.compact_all())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(EtcdError::from)?;
        Ok(Response::new(DefragmentResponse {
            header: self.header(),
        }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        maintenance_admin(&self.node, &request).await?;
        let (hash, _, _) = self.node.mvcc.hash_kv(0).map_err(EtcdError::from)?;
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
        let (hash, compact_revision, hash_revision) = self
            .node
            .mvcc
            .hash_kv(request.get_ref().revision)
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
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented(
            "oxcd: snapshot save is not implemented yet",
        ))
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
            raft.ask_to_campaign(target)
                .await
                .map_err(|_| EtcdError::BadLeaderTransferee)?;
            let deadline = tokio::time::Instant::now()
                + 4 * self.node.settings.election
                + Duration::from_secs(1);
            let mut metrics = raft.leader_changes();
            while raft.leader() != Some(target) {
                if tokio::time::timeout_at(deadline, metrics.changed())
                    .await
                    .is_err()
                {
                    return Err(EtcdError::Timeout.into());
                }
            }
        }
        Ok(Response::new(MoveLeaderResponse {
            header: self.header(),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented("oxcd: downgrade is not implemented"))
    }
}
