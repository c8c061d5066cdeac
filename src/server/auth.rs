//! etcd's Auth service: users, roles and key-range permissions.
//!
//! Invariants:
//! - Every change goes through the log; passwords are hashed here, on the proposing member, with
//!   bcrypt at `--bcrypt-cost` (off the async runtime), and only the hash is proposed.
//! - Reads (status, user/role get and list) are linearizable: they wait for the local store to
//!   catch up with the leader, as etcd's (which go through raft) do.
//! - While authentication is on, every RPC here but UserGet (of oneself) and RoleGet (of one's
//!   own role) needs the `root` role, as etcd's.
//! - Authenticate checks the password on the member that serves it (bcrypt, off the runtime; an
//!   unknown user costs the same as a wrong password), then proposes the new simple token so
//!   every member knows it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::Rng;
use tonic::{Request, Response, Status};

use super::error::EtcdError;
use super::{access, guard};
use crate::apply::{Applied, Op};
use crate::auth::{AuthCmd, AuthError};
use crate::node::Node;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;

/// The Auth service of one member.
#[derive(Debug, Clone)]
pub struct AuthService {
    node: Arc<Node>,
    tokens_issued: Arc<AtomicU64>,
    /// A bcrypt hash at the configured cost, checked against when the user does not exist.
    dummy_hash: Arc<String>,
}

impl AuthService {
    /// An Auth service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        let dummy_hash =
            bcrypt::hash("oxcd: no such user", node.settings.bcrypt_cost).unwrap_or_default();
        AuthService {
            node,
            tokens_issued: Arc::new(AtomicU64::new(0)),
            dummy_hash: Arc::new(dummy_hash),
        }
    }

    /// Checks that the caller of `req` may administer (always true while auth is off).
    /// Returns the requesting user (`None` without a token), for the check at apply.
    async fn admin<T>(&self, req: &Request<T>) -> Result<Option<String>, EtcdError> {
        guard::voter_rpc(&self.node, req)?;
        let c = access::caller(&self.node, req).await?;
        access::admin(&self.node, c.as_ref())?;
        Ok(c.map(|c| c.user).filter(|u| !u.is_empty()))
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(self.node.header(self.node.mvcc.current_revision()))
    }

    /// Proposes `cmd` requested by `by` (whose admin right is checked again when it applies).
    async fn change_as(
        &self,
        by: Option<String>,
        cmd: AuthCmd,
    ) -> Result<Option<ResponseHeader>, EtcdError> {
        self.propose(Op::AuthBy { by, cmd }).await
    }

    /// Proposes `cmd` as is (Authenticate); the response header.
    async fn change(&self, cmd: AuthCmd) -> Result<Option<ResponseHeader>, EtcdError> {
        self.propose(Op::Auth(cmd)).await
    }

    async fn propose(&self, op: Op) -> Result<Option<ResponseHeader>, EtcdError> {
        match self.node.propose(op).await? {
            Applied::AuthChanged { revision } => Ok(Some(self.node.header(revision))),
            Applied::Failed(e) => Err(e.into()),
            other => {
                tracing::error!(?other, "unexpected result of an auth command");
                Err(EtcdError::Internal(
                    "unexpected result of an auth command".to_string(),
                ))
            }
        }
    }

    /// A bcrypt hash of `password` at the configured cost.
    async fn hash(&self, password: String) -> Result<String, EtcdError> {
        let cost = self.node.settings.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| EtcdError::Internal(format!("password hashing stopped: {e}")))?
            .map_err(|e| EtcdError::Internal(format!("password hashing failed: {e}")))
    }

    async fn read<T>(&self, req: &Request<T>) -> Result<(), EtcdError> {
        self.admin(req).await?;
        self.node.linearizable_barrier().await?;
        Ok(())
    }
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> R<AuthEnableResponse> {
        let by = self.admin(&request).await?;
        let header = self.change_as(by, AuthCmd::Enable).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(&self, request: Request<AuthDisableRequest>) -> R<AuthDisableResponse> {
        let by = self.admin(&request).await?;
        let header = self.change_as(by, AuthCmd::Disable).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(&self, request: Request<AuthStatusRequest>) -> R<AuthStatusResponse> {
        self.read(&request).await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: self.node.auth.enabled(),
            auth_revision: self.node.auth.revision(),
        }))
    }

    async fn authenticate(&self, request: Request<AuthenticateRequest>) -> R<AuthenticateResponse> {
        guard::voter_rpc(&self.node, &request)?;
        // Answer from an auth store that has caught up with the leader (`auth enable` or a new
        // user acknowledged through another member must count).
        self.node
            .linearizable_barrier()
            .await
            .map_err(EtcdError::from)?;
        if !self.node.auth.enabled() {
            return Err(EtcdError::from(AuthError::AuthNotEnabled).into());
        }
        let r = request.into_inner();
        // As etcd: if the store moves on between the password check and the token (the
        // password may have changed), check again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (hash, revision) = self.node.auth.password_hash(&r.name);
            let (hash, known) = match hash {
                Some(h) => (h, true),
                None => (self.dummy_hash.to_string(), false),
            };
            let password = r.password.clone();
            let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
                .await
                .map_err(|e| EtcdError::Internal(format!("password check stopped: {e}")))?
                .unwrap_or(false);
            if !(ok && known) {
                return Err(EtcdError::from(AuthError::AuthFailed).into());
            }
            if let Some(token) = self.node.auth.mint_jwt(&r.name, revision) {
                // A JWT carries everything (its revision included): no member needs telling.
                return Ok(Response::new(AuthenticateResponse {
                    header: self.header(),
                    token: token.map_err(EtcdError::from)?,
                }));
            }
            let letters: String = rand::thread_rng()
                .sample_iter(rand::distributions::Alphanumeric)
                .filter(|c| c.is_ascii_alphabetic())
                .take(16)
                .map(char::from)
                .collect();
            let n = self.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
            let token = format!("{letters}.{n}");
            let cmd = AuthCmd::Authenticate {
                name: r.name.clone(),
                token: token.clone(),
                revision,
            };
            match self.change(cmd).await {
                Ok(header) => return Ok(Response::new(AuthenticateResponse { header, token })),
                Err(EtcdError::Auth(AuthError::OldRevision)) if attempts < 3 => {
                    self.node
                        .linearizable_barrier()
                        .await
                        .map_err(EtcdError::from)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> R<AuthUserAddResponse> {
        let by = self.admin(&request).await?;
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(EtcdError::Auth(crate::auth::AuthError::UserEmpty).into());
        }
        let no_password = r.options.is_some_and(|o| o.no_password);
        let hashed_password = if no_password {
            String::new()
        } else if !r.hashed_password.is_empty() {
            r.hashed_password
        } else {
            self.hash(r.password).await?
        };
        let header = self
            .change_as(
                by,
                AuthCmd::UserAdd {
                    name: r.name,
                    hashed_password,
                    no_password,
                },
            )
            .await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> R<AuthUserGetResponse> {
        guard::voter_rpc(&self.node, &request)?;
        if let Some(c) = access::caller(&self.node, &request).await? {
            // Anyone may read their own user; other users need root.
            if c.user != request.get_ref().name || self.node.auth.check_caller(&c).is_err() {
                access::admin(&self.node, Some(&c))?;
            }
        }
        self.node
            .linearizable_barrier()
            .await
            .map_err(EtcdError::from)?;
        let user = self
            .node
            .auth
            .user(&request.get_ref().name)
            .map_err(EtcdError::from)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles: user.roles,
        }))
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> R<AuthUserListResponse> {
        self.read(&request).await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users: self.node.auth.user_names(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> R<AuthUserDeleteResponse> {
        let by = self.admin(&request).await?;
        let name = request.into_inner().name;
        let header = self.change_as(by, AuthCmd::UserDelete { name }).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> R<AuthUserChangePasswordResponse> {
        let by = self.admin(&request).await?;
        let r = request.into_inner();
        // Refuse an unknown user before spending a bcrypt hash on it (once caught up).
        self.node
            .linearizable_barrier()
            .await
            .map_err(EtcdError::from)?;
        self.node.auth.user(&r.name).map_err(EtcdError::from)?;
        let hashed_password = if r.hashed_password.is_empty() {
            self.hash(r.password).await?
        } else {
            r.hashed_password
        };
        let header = self
            .change_as(
                by,
                AuthCmd::UserChangePassword {
                    name: r.name,
                    hashed_password,
                },
            )
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> R<AuthUserGrantRoleResponse> {
        let by = self.admin(&request).await?;
        let r = request.into_inner();
        let header = self
            .change_as(
                by,
                AuthCmd::UserGrantRole {
                    user: r.user,
                    role: r.role,
                },
            )
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> R<AuthUserRevokeRoleResponse> {
        let by = self.admin(&request).await?;
        let r = request.into_inner();
        let header = self
            .change_as(
                by,
                AuthCmd::UserRevokeRole {
                    name: r.name,
                    role: r.role,
                },
            )
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> R<AuthRoleAddResponse> {
        let by = self.admin(&request).await?;
        let name = request.into_inner().name;
        let header = self.change_as(by, AuthCmd::RoleAdd { name }).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> R<AuthRoleGetResponse> {
        guard::voter_rpc(&self.node, &request)?;
        if let Some(c) = access::caller(&self.node, &request).await? {
            // Anyone may read a role they have; other roles need root.
            let own = self.node.auth.check_caller(&c).is_ok()
                && self
                    .node
                    .auth
                    .user(&c.user)
                    .is_ok_and(|u| u.roles.iter().any(|r| r == &request.get_ref().role));
            if !own {
                access::admin(&self.node, Some(&c))?;
            }
        }
        self.node
            .linearizable_barrier()
            .await
            .map_err(EtcdError::from)?;
        let role = self
            .node
            .auth
            .role(&request.get_ref().role)
            .map_err(EtcdError::from)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm: role.key_permission,
        }))
    }

    async fn role_list(&self, request: Request<AuthRoleListRequest>) -> R<AuthRoleListResponse> {
        self.read(&request).await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: self.node.auth.role_names(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> R<AuthRoleDeleteResponse> {
        let by = self.admin(&request).await?;
        let role = request.into_inner().role;
        let header = self.change_as(by, AuthCmd::RoleDelete { role }).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> R<AuthRoleGrantPermissionResponse> {
        let by = self.admin(&request).await?;
        let r = request.into_inner();
        let perm = r.perm.ok_or(EtcdError::PermissionNotGiven)?;
        let header = self
            .change_as(
                by,
                AuthCmd::RoleGrantPermission {
                    name: r.name,
                    perm_type: perm.perm_type,
                    key: perm.key,
                    range_end: perm.range_end,
                },
            )
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> R<AuthRoleRevokePermissionResponse> {
        let by = self.admin(&request).await?;
        let r = request.into_inner();
        let header = self
            .change_as(
                by,
                AuthCmd::RoleRevokePermission {
                    role: r.role,
                    key: r.key,
                    range_end: r.range_end,
                },
            )
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
