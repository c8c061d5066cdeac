//! etcd's Cluster service: MemberList, MemberAdd, MemberRemove, MemberUpdate, MemberPromote.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::EtcdError;
use super::{access, guard};
use crate::node::Node;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::raft::{MemberInfo, MembershipOp};

/// The Cluster service.
#[derive(Clone, Debug)]
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// A Cluster service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }

    fn header(&self) -> Option<crate::proto::etcdserverpb::ResponseHeader> {
        // etcd's cluster service fills cluster ID, member ID and term only: no revision.
        Some(self.node.header(0))
    }
}

/// etcd's view of a member.
pub fn to_pb(m: &MemberInfo) -> Member {
    Member {
        id: m.id,
        name: m.member.name.clone(),
        peer_ur_ls: m.member.peer_urls.clone(),
        client_ur_ls: m.member.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

fn check_urls(urls: &[String]) -> Result<(), EtcdError> {
    if urls.is_empty() {
        return Err(EtcdError::InvalidArgument(
            "member peer URLs are not provided".to_string(),
        ));
    }
    for u in urls {
        let ok = url::Url::parse(u)
            .map(|p| {
                matches!(p.scheme(), "http" | "https")
                    && p.host_str().is_some()
                    && p.port().is_some()
            })
            .unwrap_or(false);
        if !ok {
            return Err(EtcdError::InvalidArgument(format!(
                "invalid peer URL {u:?}"
            )));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        access::admin(
            &self.node,
            access::caller(&self.node, &request).await?.as_ref(),
        )?;
        let r = request.into_inner();
        check_urls(&r.peer_ur_ls)?;
        let res = self
            .node
            .raft
            .change_membership(MembershipOp::Add {
                peer_urls: r.peer_ur_ls,
                learner: r.is_learner,
            })
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: res.added.as_ref().map(to_pb),
            members: res.members.iter().map(to_pb).collect(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        access::admin(
            &self.node,
            access::caller(&self.node, &request).await?.as_ref(),
        )?;
        let id = request.into_inner().id;
        let res = self
            .node
            .raft
            .change_membership(MembershipOp::Remove { id })
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: res.members.iter().map(to_pb).collect(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        access::admin(
            &self.node,
            access::caller(&self.node, &request).await?.as_ref(),
        )?;
        let r = request.into_inner();
        check_urls(&r.peer_ur_ls)?;
        let res = self
            .node
            .raft
            .change_membership(MembershipOp::Update {
                id: r.id,
                peer_urls: r.peer_ur_ls,
            })
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: res.members.iter().map(to_pb).collect(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        if request.get_ref().linearizable {
            self.node
                .linearizable_barrier()
                .await
                .map_err(EtcdError::from)?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.node.raft.members().iter().map(to_pb).collect(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        access::admin(
            &self.node,
            access::caller(&self.node, &request).await?.as_ref(),
        )?;
        let id = request.into_inner().id;
        let res = self
            .node
            .raft
            .change_membership(MembershipOp::Promote { id })
            .await
            .map_err(EtcdError::from)?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: res.members.iter().map(to_pb).collect(),
        }))
    }
}
