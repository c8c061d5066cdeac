//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::EtcdError;
use super::{access, guard, validate};
use crate::apply::{Applied, Op, Pb};
use crate::auth::Caller;
use crate::node::quota::KV_OVERHEAD;
use crate::node::Node;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::request_op::Request as Op1;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};

/// The KV service.
#[derive(Clone, Debug)]
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    /// A KV service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }

    fn header(&self, partial: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let rev = partial.map(|h| h.revision).unwrap_or(0);
        Some(self.node.header(rev))
    }

    async fn propose(&self, op: Op, c: Option<&Caller>) -> Result<Applied, EtcdError> {
        match self
            .node
            .propose(access::guarded(&self.node, op, c))
            .await?
        {
            Applied::Failed(e) => Err(e.into()),
            other => Ok(other),
        }
    }

    /// Serves a Range (shared with the gateway later). For a linearizable read the caller must
    /// already have waited for this member to catch up (`linearizable_barrier`) and resolved
    /// `c` after that, so the permission check and the read see the same state.
    pub async fn do_range(
        &self,
        r: RangeRequest,
        c: Option<&Caller>,
    ) -> Result<RangeResponse, EtcdError> {
        validate::range(&r)?;
        // Without a token while authentication is on, the caller is nobody.
        let caller = match c {
            Some(c) => Some(c.clone()),
            None if self.node.auth.enabled() => Some(Caller::default()),
            None => None,
        };
        if let Some(c) = &caller {
            access::range(&self.node, c, &r)?;
        }
        // A single key is read in place; a range may visit many keys and fetch many values,
        // so it runs on the blocking pool.
        let res = if r.range_end.is_empty() {
            self.node.mvcc.range(&r)?
        } else {
            self.node.mvcc.blocking(move |m| m.range(&r)).await?
        };
        Ok(RangeResponse {
            header: Some(self.node.header(res.header_revision)),
            kvs: res.kvs,
            more: res.more,
            count: res.count,
        })
    }

    /// Serves a Put.
    pub async fn do_put(
        &self,
        r: PutRequest,
        c: Option<&Caller>,
    ) -> Result<PutResponse, EtcdError> {
        validate::put(&r)?;
        validate::size(&r, self.node.settings.max_request_bytes)?;
        if let Some(c) = c {
            access::put(&self.node, c, &r)?;
        }
        self.node.check_quota(put_cost(&r)).await?;
        match self.propose(Op::Put(Pb(r)), c).await? {
            Applied::Put(Pb(mut resp)) => {
                resp.header = self.header(resp.header);
                Ok(resp)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Serves a DeleteRange.
    pub async fn do_delete(
        &self,
        r: DeleteRangeRequest,
        c: Option<&Caller>,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        validate::delete(&r)?;
        validate::size(&r, self.node.settings.max_request_bytes)?;
        if let Some(c) = c {
            access::delete(&self.node, c, &r)?;
        }
        match self.propose(Op::DeleteRange(Pb(r)), c).await? {
            Applied::DeleteRange(Pb(mut resp)) => {
                resp.header = self.header(resp.header);
                Ok(resp)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Serves a Txn.
    pub async fn do_txn(
        &self,
        r: TxnRequest,
        c: Option<&Caller>,
    ) -> Result<TxnResponse, EtcdError> {
        validate::txn(&r, self.node.settings.max_txn_ops)?;
        validate::size(&r, self.node.settings.max_request_bytes)?;
        if let Some(c) = c {
            access::txn(&self.node, c, &r)?;
        }
        // etcd checks every txn against the quota, so none passes while the database is over
        // it (even one without puts, whose cost is 0).
        self.node.check_quota(txn_cost(&r)).await?;
        match self.propose(Op::Txn(Pb(r)), c).await? {
            Applied::Txn(Pb(mut resp)) => {
                resp.header = self.header(resp.header);
                Ok(resp)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Serves a Compact.
    pub async fn do_compact(
        &self,
        r: CompactionRequest,
        c: Option<&Caller>,
    ) -> Result<CompactionResponse, EtcdError> {
        access::admin(&self.node, c)?;
        let (physical, at) = (r.physical, r.revision);
        match self.propose(Op::Compact(Pb(r)), c).await? {
            Applied::Compacted { revision } => {
                // The compact revision is in force once applied; its stored rows are deleted in
                // the background, and a physical compaction answers only after that.
                if physical {
                    self.node.mvcc.wait_compacted(at).await;
                }
                Ok(CompactionResponse {
                    header: Some(self.node.header(revision)),
                })
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// etcd's estimate of what a put adds to the database, for the quota check.
fn put_cost(r: &PutRequest) -> u64 {
    KV_OVERHEAD + (r.key.len() + r.value.len()) as u64
}

/// etcd's estimate for a txn: the costlier branch's puts (a txn without puts costs nothing).
fn txn_cost(r: &TxnRequest) -> u64 {
    let branch = |ops: &[crate::proto::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Op1::RequestPut(p)) => put_cost(p),
                Some(Op1::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    };
    branch(&r.success).max(branch(&r.failure))
}

fn unexpected(a: &Applied) -> EtcdError {
    tracing::error!(?a, "apply returned a result of the wrong kind");
    EtcdError::Internal("unexpected apply result".to_string())
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        guard::require_leader(&self.node, &request)?;
        if !request.get_ref().serializable {
            guard::not_learner(&self.node)?;
        }
        // Catch up first (linearizable reads), then resolve the caller and check: the check
        // and the read see the same state.
        if !request.get_ref().serializable {
            self.node
                .linearizable_barrier()
                .await
                .map_err(EtcdError::from)?;
        }
        let c = access::caller_local(&self.node, &request).await?;
        Ok(Response::new(
            self.do_range(request.into_inner(), c.as_ref()).await?,
        ))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let c = access::caller(&self.node, &request).await?;
        Ok(Response::new(
            self.do_put(request.into_inner(), c.as_ref()).await?,
        ))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let c = access::caller(&self.node, &request).await?;
        Ok(Response::new(
            self.do_delete(request.into_inner(), c.as_ref()).await?,
        ))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let c = access::caller(&self.node, &request).await?;
        Ok(Response::new(
            self.do_txn(request.into_inner(), c.as_ref()).await?,
        ))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let c = access::caller(&self.node, &request).await?;
        Ok(Response::new(
            self.do_compact(request.into_inner(), c.as_ref()).await?,
        ))
    }
}
