//! etcd's Lease service.
//!
//! Invariants:
//! - Grants and revokes go through the log; the proposing member picks a server-chosen ID and
//!   raises the TTL to the minimum before proposing, so every member applies the same values.
//! - Keep-alive and time-to-live are answered by the leader (forwarded from other members); an
//!   unknown lease is not an error: keep-alive answers TTL 0, time-to-live TTL -1, as etcd does.
//! - Keep-alive answers arrive in request order on each stream; any other error ends the stream
//!   with etcd's status.
//! - With authentication on, revoking a lease needs WRITE and reading its time-to-live needs
//!   READ on every key attached to it, as etcd's.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::EtcdError;
use super::{access, guard};
use crate::apply::{Applied, Op, Pb};
use crate::auth::{Access, Caller};
use crate::lease::MAX_LEASE_TTL;
use crate::node::Node;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, ResponseHeader,
};

/// Keep-alives of one stream in flight at once (answers still go out in order).
const KEEPALIVE_PIPELINE: usize = 64;

/// The Lease service of one member.
#[derive(Debug, Clone)]
pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    /// A Lease service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        LeaseService { node }
    }
}

fn current_header(node: &Node) -> Option<ResponseHeader> {
    Some(node.header(node.mvcc.current_revision()))
}

fn unexpected(what: &str, got: &Applied) -> EtcdError {
    tracing::error!(?got, "unexpected result of a {what}");
    EtcdError::Internal(format!("unexpected result of a {what}"))
}

/// Serves a LeaseGrant.
pub async fn grant(node: &Node, r: LeaseGrantRequest) -> Result<LeaseGrantResponse, EtcdError> {
    if r.ttl > MAX_LEASE_TTL {
        return Err(EtcdError::LeaseTtlTooLarge);
    }
    // etcd's estimate of a lease's cost against the quota.
    node.check_quota(64).await?;
    match node.lease_grant(r.ttl, r.id).await? {
        Applied::LeaseGranted { id, ttl, revision } => {
            crate::metrics::get().lease_granted.inc();
            Ok(LeaseGrantResponse {
                header: Some(node.header(revision)),
                id,
                ttl,
                error: String::new(),
            })
        }
        Applied::Failed(e) => Err(e.into()),
        other => Err(unexpected("lease grant", &other)),
    }
}

/// Serves a LeaseRevoke.
pub async fn revoke(
    node: &Node,
    r: LeaseRevokeRequest,
    c: Option<&Caller>,
) -> Result<LeaseRevokeResponse, EtcdError> {
    if let Some(c) = c {
        access::lease_keys(node, c, r.id, Access::Write)?;
    }
    match node
        .propose(access::guarded(node, Op::LeaseRevoke(Pb(r)), c))
        .await?
    {
        Applied::LeaseRevoked { revision } => {
            crate::metrics::get().lease_revoked.inc();
            Ok(LeaseRevokeResponse {
                header: Some(node.header(revision)),
            })
        }
        Applied::Failed(e) => Err(e.into()),
        other => Err(unexpected("lease revoke", &other)),
    }
}

/// Serves one keep-alive request.
pub async fn keep_alive_once(
    node: &Node,
    r: LeaseKeepAliveRequest,
) -> Result<LeaseKeepAliveResponse, EtcdError> {
    // The header is taken before renewing, as etcd's: a renewal never reports a revision after
    // a revoke it raced with.
    let header = current_header(node);
    let ttl = node.raft.lease_renew(r.id).await?;
    if ttl > 0 {
        crate::metrics::get().lease_renewed.inc();
    }
    Ok(LeaseKeepAliveResponse {
        header,
        id: r.id,
        ttl,
    })
}

/// Serves a LeaseTimeToLive.
pub async fn time_to_live(
    node: &Node,
    r: LeaseTimeToLiveRequest,
    c: Option<&Caller>,
) -> Result<LeaseTimeToLiveResponse, EtcdError> {
    if let Some(c) = c {
        access::lease_keys(node, c, r.id, Access::Read)?;
    }
    let t = node.raft.lease_time_to_live(r.id, r.keys).await?;
    Ok(match t {
        Some(t) => LeaseTimeToLiveResponse {
            header: current_header(node),
            id: r.id,
            ttl: t.remaining,
            granted_ttl: t.granted,
            keys: t.keys,
        },
        None => LeaseTimeToLiveResponse {
            header: current_header(node),
            id: r.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        },
    })
}

/// Serves a LeaseLeases (linearizable: every lease granted before the call is listed).
pub async fn leases(node: &Node) -> Result<LeaseLeasesResponse, EtcdError> {
    node.linearizable_barrier().await?;
    Ok(LeaseLeasesResponse {
        header: current_header(node),
        leases: node
            .leases
            .leases()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect(),
    })
}

/// The response stream of one LeaseKeepAlive call.
pub type KeepAliveStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        Ok(Response::new(
            grant(&self.node, request.into_inner()).await?,
        ))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let c = access::caller(&self.node, &request).await?;
        Ok(Response::new(
            revoke(&self.node, request.into_inner(), c.as_ref()).await?,
        ))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        Ok(Response::new(keep_alive_stream(
            self.node.clone(),
            request.into_inner(),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        let c = access::caller(&self.node, &request).await?;
        Ok(Response::new(
            time_to_live(&self.node, request.into_inner(), c.as_ref()).await?,
        ))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        guard::voter_rpc(&self.node, &request)?;
        Ok(Response::new(leases(&self.node).await?))
    }
}

/// Answers a stream of keep-alive requests (gRPC's, or the JSON gateway's) in order, with up to
/// [`KEEPALIVE_PIPELINE`] renewals in flight; ends after the first error or when `inbound` ends.
pub fn keep_alive_stream<S>(
    node: Arc<Node>,
    inbound: S,
) -> Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>
where
    S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(KEEPALIVE_PIPELINE);
    tokio::spawn(async move {
        let mut answers = inbound
            .map(|r| {
                let node = node.clone();
                async move {
                    match r {
                        Ok(req) => keep_alive_once(&node, req).await.map_err(Status::from),
                        Err(s) => Err(s),
                    }
                }
            })
            .buffered(KEEPALIVE_PIPELINE);
        while let Some(answer) = answers.next().await {
            let last = answer.is_err();
            if tx.send(answer).await.is_err() || last {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
