//! etcd's server-side Election service (`v3electionpb.Election`), as etcd 3.5's `v3election`:
//! the concurrency package's election over this member's KV ([`super::recipe`]).
//!
//! Invariants:
//! - A candidate's key is `name/<lease as hex>` attached to its lease; the leader is the key under
//!   `name/` created first, and a Campaign call returns once every key created before its own is
//!   gone. A leader key stays the leader's only while its create revision is the one Campaign
//!   returned: Proclaim and Resign compare it (`election: not leader` when it changed).
//! - Leader reads are linearizable; Observe reads once after catching up with the leader, then
//!   follows this member's watch hub (subscribed before that read), so it misses no leader and
//!   sends the values of one leader key in revision order.
//! - Every request is checked like a client's own KV requests (auth with its token, quota);
//!   etcd's errors pass through with their codes, the election's own with code Unknown.
//! - A Campaign call abandoned by its client resigns, so it never becomes leader later.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::EtcdError;
use super::kv::KvService;
use super::recipe::{self, Recipes};
use super::{access, guard};
use crate::node::Node;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

/// The Election service of one member.
#[derive(Debug, Clone)]
pub struct ElectionService {
    node: Arc<Node>,
    kv: KvService,
}

impl ElectionService {
    /// An Election service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        ElectionService {
            kv: KvService::new(node.clone()),
            node,
        }
    }

    /// The recipes for a write: the caller resolved after catching up with auth changes.
    async fn recipes<T>(&self, request: &Request<T>) -> Result<Recipes, Status> {
        let c = access::caller(&self.node, request).await?;
        Ok(Recipes::new(self.node.clone(), self.kv.clone(), c))
    }

    /// The recipes for a linearizable read: this member catches up with the leader first, then
    /// resolves the caller, so the permission check and the read see the same state.
    async fn read_recipes<T>(&self, request: &Request<T>) -> Result<Recipes, Status> {
        self.node
            .linearizable_barrier()
            .await
            .map_err(EtcdError::from)?;
        let c = access::caller_local(&self.node, request).await?;
        Ok(Recipes::new(self.node.clone(), self.kv.clone(), c))
    }
}

/// The leader key of a Proclaim or Resign, or etcd's `"leader" field must be provided`.
fn leader_key(leader: Option<LeaderKey>) -> Result<LeaderKey, Status> {
    leader.ok_or_else(|| Status::unknown(recipe::MISSING_LEADER_KEY))
}

#[tonic::async_trait]
impl Election for ElectionService {
    type ObserveStream = recipe::ObserveStream;

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let r = self.recipes(&request).await?;
        let req = request.into_inner();
        let won = r.campaign(&req.name, req.lease, req.value).await?;
        Ok(Response::new(CampaignResponse {
            header: won.header,
            leader: Some(LeaderKey {
                name: req.name,
                key: won.key,
                rev: won.rev,
                lease: won.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let r = self.recipes(&request).await?;
        let req = request.into_inner();
        let leader = leader_key(req.leader)?;
        // etcd resumes the election in a session on the leader's lease (a new one for 0).
        let lease = r.session(leader.lease).await?;
        let header = r
            .proclaim(&leader.key, leader.rev, lease, req.value)
            .await?;
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let r = self.read_recipes(&request).await?;
        Ok(Response::new(r.leader(&request.get_ref().name).await?))
    }

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        // Subscribe before the first read, so no commit after it is missed.
        let rx = self.node.mvcc.hub().subscribe();
        let r = self.read_recipes(&request).await?;
        let stream = r.observe(&request.get_ref().name, rx).await?;
        Ok(Response::new(stream))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let r = self.recipes(&request).await?;
        let leader = leader_key(request.into_inner().leader)?;
        let header = r.resign(&leader.key, leader.rev).await?;
        Ok(Response::new(ResignResponse { header }))
    }
}
