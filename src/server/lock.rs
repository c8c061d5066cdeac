//! etcd's server-side Lock service (`v3lockpb.Lock`), as etcd 3.5's `v3lock`: Lock runs the
//! concurrency package's mutex over this member's KV ([`super::recipe`]), Unlock deletes the key.
//!
//! Invariants:
//! - A lock key is `name/<lease as hex>` attached to the lease, so the lock is released when the
//!   lease ends; a Lock call waits until every key under `name/` created before its own is gone.
//! - Every request is checked like a client's own KV requests (auth with its token, quota);
//!   etcd's errors pass through with their codes, the recipe's own with code Unknown.
//! - A Lock call abandoned by its client removes its key, so it never holds the lock later.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::kv::KvService;
use super::recipe::Recipes;
use super::{access, guard};
use crate::node::Node;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

/// The Lock service of one member.
#[derive(Debug, Clone)]
pub struct LockService {
    node: Arc<Node>,
    kv: KvService,
}

impl LockService {
    /// A Lock service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        LockService {
            kv: KvService::new(node.clone()),
            node,
        }
    }

    async fn recipes<T>(&self, request: &Request<T>) -> Result<Recipes, Status> {
        guard::voter_rpc(&self.node, request)?;
        let c = access::caller(&self.node, request).await?;
        Ok(Recipes::new(self.node.clone(), self.kv.clone(), c))
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let r = self.recipes(&request).await?;
        let req = request.into_inner();
        let locked = r.lock(&req.name, req.lease).await?;
        Ok(Response::new(LockResponse {
            header: locked.header,
            key: locked.key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let r = self.recipes(&request).await?;
        let header = r.unlock(request.into_inner().key).await?;
        Ok(Response::new(UnlockResponse { header }))
    }
}
