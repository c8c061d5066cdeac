//! A small etcd v3 client over oxcd's own generated stubs: what the join logic and oxcd's client
//! commands need (member list/add/remove/promote, status, auth bootstrap, a health read, snapshot).
//!
//! Invariants: it speaks only the public etcd client API (it works against the real etcd too);
//! every call has a deadline; errors keep the server's gRPC code and message, because etcd's errors
//! are matched by their text.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::{
    AuthEnableRequest, AuthStatusRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    AuthenticateRequest, Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest,
    MemberRemoveRequest, MoveLeaderRequest, RangeRequest, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse,
};

/// The deadline of a MoveLeader call (at least): the server waits up to four election timeouts
/// plus a second for the target to lead (five seconds with etcd's default election timeout).
const MOVE_LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// The endpoint could not be dialled (refused, unresolvable, TLS, timeout).
    #[error("cannot reach {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{message}")]
    Rpc {
        /// The gRPC code.
        code: Code,
        /// The server's message (etcd's error text).
        message: String,
    },
    /// The settings cannot be used (bad TLS files, bad URL).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// Whether the server answered with exactly this etcd error text.
    pub fn is(&self, text: &str) -> bool {
        matches!(self, ClientError::Rpc { message, .. } if message == text)
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// How to reach and authenticate against members.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The CA that signs the members' client certificates (`--cacert`).
    pub ca: Option<PathBuf>,
    /// A client certificate and key (`--cert`, `--key`).
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate (`--insecure-skip-tls-verify`, auto TLS).
    pub insecure: bool,
    /// User name and password (`--user`), when authentication is on.
    pub user: Option<(String, String)>,
    /// Deadline of each call.
    pub timeout: Duration,
}

impl ClientOptions {
    fn tls(&self) -> Result<Arc<crate::tls::ClientTlsConfig>, ClientError> {
        let ck = self
            .cert_key
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        crate::tls::client_config(self.ca.as_deref(), ck, self.insecure)
            .map_err(|e| ClientError::Config(format!("client TLS: {e}")))
    }
}

/// A connection to one member.
#[derive(Clone)]
pub struct EtcdClient {
    endpoint: String,
    channel: Channel,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// The endpoint with a scheme: etcdctl accepts `host:port` as `http://host:port`.
pub fn normalize_endpoint(e: &str) -> String {
    let e = e.trim();
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

impl EtcdClient {
    /// Dials `endpoint` and, when `opts.user` is set, authenticates (a cluster without
    /// authentication is used without a token).
    pub async fn connect(endpoint: &str, opts: &ClientOptions) -> Result<EtcdClient, ClientError> {
        let endpoint = normalize_endpoint(endpoint);
        let connect_err = |reason: String| ClientError::Connect {
            endpoint: endpoint.clone(),
            reason,
        };
        let (target, tls) = match endpoint.strip_prefix("https://") {
            Some(rest) => (format!("http://{rest}"), Some(opts.tls()?)),
            None => (endpoint.clone(), None),
        };
        let ep = Endpoint::from_shared(target)
            .map_err(|e| ClientError::Config(format!("bad endpoint {endpoint}: {e}")))?
            .connect_timeout(opts.timeout)
            .tcp_nodelay(true);
        let dial = async {
            match tls {
                None => ep.connect().await,
                Some(c) => {
                    ep.connect_with_connector(crate::tls::TlsConnector::new(c))
                        .await
                }
            }
        };
        let channel = tokio::time::timeout(opts.timeout, dial)
            .await
            .map_err(|_| connect_err("timed out".to_string()))?
            .map_err(|e| connect_err(source_chain(&e)))?;
        let mut client = EtcdClient {
            endpoint: endpoint.clone(),
            channel,
            token: None,
            timeout: opts.timeout,
        };
        if let Some((name, password)) = &opts.user {
            let mut req = Request::new(AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            });
            req.set_timeout(opts.timeout);
            let r = AuthClient::new(client.channel.clone())
                .authenticate(req)
                .await;
            match r {
                Ok(resp) => {
                    let token = resp.into_inner().token;
                    client.token = Some(token.parse().map_err(|_| {
                        ClientError::Config("the server returned an unusable token".to_string())
                    })?);
                }
                Err(s) if s.message() == "etcdserver: authentication is not enabled" => {}
                Err(s) => return Err(s.into()),
            }
        }
        Ok(client)
    }

    /// The endpoint this client dials.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A unary request with this client's deadline and token. Every unary call goes through
    /// here: the channel itself has no deadline, so a stream (a snapshot) can outlast one.
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.timeout);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("token", t.clone());
        }
        r
    }

    /// `MemberList` (linearizable when `linearizable`); returns the cluster ID and members.
    pub async fn member_list(&self, linearizable: bool) -> Result<(u64, Vec<Member>), ClientError> {
        let r = ClusterClient::new(self.channel.clone())
            .member_list(self.req(MemberListRequest { linearizable }))
            .await?
            .into_inner();
        let cluster_id = r.header.map(|h| h.cluster_id).unwrap_or_default();
        Ok((cluster_id, r.members))
    }

    /// `MemberAdd`; returns the new member and the members after the change.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<(Member, Vec<Member>), ClientError> {
        let r = ClusterClient::new(self.channel.clone())
            .member_add(self.req(MemberAddRequest {
                peer_ur_ls: peer_urls,
                is_learner: learner,
            }))
            .await?
            .into_inner();
        let added = r.member.ok_or_else(|| ClientError::Rpc {
            code: Code::Internal,
            message: "MemberAdd answered without the new member".to_string(),
        })?;
        Ok((added, r.members))
    }

    /// `MemberRemove`.
    pub async fn member_remove(&self, id: u64) -> Result<(), ClientError> {
        ClusterClient::new(self.channel.clone())
            .member_remove(self.req(MemberRemoveRequest { id }))
            .await?;
        Ok(())
    }

    /// `MemberPromote`.
    pub async fn member_promote(&self, id: u64) -> Result<(), ClientError> {
        ClusterClient::new(self.channel.clone())
            .member_promote(self.req(MemberPromoteRequest { id }))
            .await?;
        Ok(())
    }

    /// `MoveLeader` to `target` (the member this client dials must be the leader).
    pub async fn move_leader(&self, target: u64) -> Result<(), ClientError> {
        // The server answers once the target leads, waiting up to four election timeouts: a
        // shorter deadline here would give up on a transfer that is still under way.
        let mut req = self.req(MoveLeaderRequest { target_id: target });
        req.set_timeout(self.timeout.max(MOVE_LEADER_TIMEOUT));
        MaintenanceClient::new(self.channel.clone())
            .move_leader(req)
            .await?;
        Ok(())
    }

    /// `Status` of the member this client dials.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        Ok(MaintenanceClient::new(self.channel.clone())
            .status(self.req(StatusRequest {}))
            .await?
            .into_inner())
    }

    /// etcdctl's `endpoint health` check: a linearizable read of one key succeeds (a permission
    /// error also proves the member serves, as etcdctl counts it).
    pub async fn health(&self) -> Result<(), ClientError> {
        let r = KvClient::new(self.channel.clone())
            .range(self.req(RangeRequest {
                key: b"health".to_vec(),
                ..Default::default()
            }))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.message() == "etcdserver: permission denied" => Ok(()),
            Err(s) => Err(s.into()),
        }
    }

    /// Creates user `root` with `password` and role `root` and turns authentication on; each
    /// step is skipped when already done, so it is safe to repeat from every member.
    pub async fn enable_root_auth(&self, password: &str) -> Result<bool, ClientError> {
        let mut auth = AuthClient::new(self.channel.clone());
        let status = auth
            .auth_status(self.req(AuthStatusRequest {}))
            .await?
            .into_inner();
        if status.enabled {
            return Ok(false);
        }
        match auth
            .user_add(self.req(AuthUserAddRequest {
                name: "root".to_string(),
                password: password.to_string(),
                ..Default::default()
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.message() == "etcdserver: user name already exists" => {}
            Err(s) => return Err(s.into()),
        }
        auth.user_grant_role(self.req(AuthUserGrantRoleRequest {
            user: "root".to_string(),
            role: "root".to_string(),
        }))
        .await?;
        auth.auth_enable(self.req(AuthEnableRequest {})).await?;
        Ok(true)
    }

    /// `Maintenance.Snapshot`: the stream of the member's backup.
    pub async fn snapshot(&self) -> Result<tonic::Streaming<SnapshotResponse>, ClientError> {
        // A snapshot of a large database takes longer than one call's deadline.
        let mut r = Request::new(SnapshotRequest {});
        if let Some(t) = &self.token {
            r.metadata_mut().insert("token", t.clone());
        }
        Ok(MaintenanceClient::new(self.channel.clone())
            .snapshot(r)
            .await?
            .into_inner())
    }
}

/// An error and its sources on one line (tonic's transport errors hide the cause in the chain).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
