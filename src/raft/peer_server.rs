//! The server side of the peer protocol, served on `--listen-peer-urls`.
//!
//! Invariant: every handler answers from this member's raft alone; forwarded proposals and
//! membership changes are carried out only if this member is the leader, otherwise the caller is
//! told who is (it retries there).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::lease::{LeaseCall, LeaseReply};
use super::membership::{MembershipError, MembershipOp};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Vote;

use super::peer::{decode, encode, PeerError, CLUSTER_ID_HEADER, REMOVED_MEMBER};
use super::{ProposeError, Shared, TypeConfig};
use crate::apply::{Applied, Op};
use crate::proto::oxcdpeerpb::peer_server::Peer;
use crate::proto::oxcdpeerpb::{
    CampaignRequest, CampaignResponse, ClusterInfoRequest, HashKvAt, HashKvReply, Payload,
    ReadIndexRequest, ReadIndexResponse,
};

/// The peer service of one member.
#[derive(Clone)]
pub struct PeerService {
    pub(super) shared: Arc<Shared>,
}

fn codec(e: PeerError) -> Status {
    Status::invalid_argument(e.to_string())
}

impl PeerService {
    /// Refuses raft messages from a member that has been removed from the cluster, telling it so
    /// (it then stops, as etcd's removed members do).
    fn refuse_other_cluster<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let theirs = req
            .metadata()
            .get(CLUSTER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u64::from_str_radix(v, 16).ok());
        match theirs {
            Some(id) if id != self.shared.cluster_id => {
                tracing::error!(
                    local = %format!("{:x}", self.shared.cluster_id),
                    remote = %format!("{id:x}"),
                    "rejected a raft message from another cluster (cluster ID mismatch)"
                );
                Err(Status::failed_precondition(format!(
                    "cluster ID mismatch: this member belongs to cluster {:x}, the sender to {id:x}",
                    self.shared.cluster_id
                )))
            }
            _ => Ok(()),
        }
    }

    fn refuse_removed(&self, vote: &Vote<u64>) -> Result<(), Status> {
        match vote.leader_id().voted_for() {
            Some(from) if self.shared.state_machine.was_removed(from) => {
                Err(Status::failed_precondition(REMOVED_MEMBER))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.refuse_other_cluster(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(codec)?;
        self.refuse_removed(&rpc.vote)?;
        let res = self.shared.raft.append_entries(rpc).await;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.refuse_other_cluster(&req)?;
        let rpc: VoteRequest<u64> = decode(req.get_ref()).map_err(codec)?;
        self.refuse_removed(&rpc.vote)?;
        let res = self.shared.raft.vote(rpc).await;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn install_snapshot(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.refuse_other_cluster(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref()).map_err(codec)?;
        self.refuse_removed(&rpc.vote)?;
        let res = self.shared.raft.install_snapshot(rpc).await;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let op: Op = decode(req.get_ref()).map_err(codec)?;
        let res: Result<Applied, ProposeError> = self.shared.write_local(op).await;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let resp = match self.shared.local_read_index().await {
            Ok(index) => ReadIndexResponse {
                index,
                error: String::new(),
            },
            Err(e) => ReadIndexResponse {
                index: 0,
                error: e.to_string(),
            },
        };
        Ok(Response::new(resp))
    }

    async fn change_membership(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let op: MembershipOp = decode(req.get_ref()).map_err(codec)?;
        let res = self.shared.change_membership_local(op).await;
        let res: Result<_, MembershipError> = res;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn lease(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.refuse_other_cluster(&req)?;
        let call: LeaseCall = decode(req.get_ref()).map_err(codec)?;
        let res: Result<LeaseReply, ProposeError> = self.shared.lease_local(call).await;
        Ok(Response::new(encode(&res).map_err(codec)?))
    }

    async fn cluster_info(
        &self,
        _req: Request<ClusterInfoRequest>,
    ) -> Result<Response<Payload>, Status> {
        let info = self.shared.cluster_info();
        Ok(Response::new(encode(&info).map_err(codec)?))
    }

    async fn hash_kv(&self, req: Request<HashKvAt>) -> Result<Response<HashKvReply>, Status> {
        self.refuse_other_cluster(&req)?;
        let reply = match self.shared.state_machine.hash_kv(req.get_ref().revision) {
            Ok((hash, compact_revision, hash_revision)) => HashKvReply {
                hash,
                compact_revision,
                hash_revision,
                error: String::new(),
            },
            Err(e) => HashKvReply {
                error: e,
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn campaign(
        &self,
        _req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.shared
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(CampaignResponse {}))
    }
}
