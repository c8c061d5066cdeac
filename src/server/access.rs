//! Who may do what, when authentication is on: the caller a request's `token` names, and the
//! key-range permissions each KV request needs.
//!
//! Invariants:
//! - While authentication is off no request is checked (`caller` is `None`).
//! - Checks run on this member's auth state after it has caught up with the leader, so an auth
//!   change acknowledged to any client is seen by every later request on every member.
//! - A transaction needs READ over every compare and, in both branches and every nested
//!   transaction, the permission each op needs, whichever branch would run (as etcd).
//! - Every client write is proposed as [`Op::Guarded`] with the auth revision it was checked at
//!   (or seen at, while authentication is off), so a change to users or roles, or enabling
//!   authentication, that commits first makes it fail instead of applying unchecked.

use tonic::Request;

use super::error::EtcdError;
use super::http::ClientCommonName;
use crate::apply::Op;
use crate::auth::{Access, AuthError, Caller};
use crate::node::Node;
use crate::proto::etcdserverpb::{
    request_op::Request as TxnOp, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};

/// The `token` metadata key, parsed once (a lookup by `&str` parses the name every time).
const TOKEN: http::HeaderName = http::HeaderName::from_static("token");

/// The auth token of `req`: its `token` metadata, or `authorization` (etcd reads both).
pub fn token<T>(req: &Request<T>) -> Option<String> {
    token_str(req).map(str::to_string)
}

fn token_str<T>(req: &Request<T>) -> Option<&str> {
    let md: &http::HeaderMap = req.metadata().as_ref();
    md.get(TOKEN)
        .or_else(|| md.get(http::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
}

/// The caller of `req`: the user its `token` (or `authorization`) metadata names, as etcd
/// reads it. A token is checked even while authentication is off (etcd refuses an unknown one
/// then too). Without a token: `None` while authentication is off, otherwise an empty user,
/// which every check refuses with `user name is empty`. A simple token this member does not
/// know yet may have been issued through another member: it is looked up again once this
/// member has caught up with the leader.
pub async fn caller<T>(node: &Node, req: &Request<T>) -> Result<Option<Caller>, EtcdError> {
    // Checks read this member's auth state: first let it catch up with every auth change
    // committed before the request (etcd checks in apply, which gives the same order).
    let token = token_str(req);
    if node.auth.enabled() || token.is_some() {
        node.linearizable_barrier().await?;
    }
    resolve(node, req, token).await
}

/// [`caller`] from this member's auth state as it is (for serializable reads, which accept a
/// member that lags).
pub async fn caller_local<T>(node: &Node, req: &Request<T>) -> Result<Option<Caller>, EtcdError> {
    resolve(node, req, token_str(req)).await
}

/// The caller `token` (read from `req`) names, as [`caller_local`] describes.
async fn resolve<T>(
    node: &Node,
    req: &Request<T>,
    token: Option<&str>,
) -> Result<Option<Caller>, EtcdError> {
    match token {
        // With `--client-cert-auth`, a TLS client's certificate names the user (etcd's
        // AuthInfoFromTLS); the gateway never passes it on.
        None if node.auth.enabled() => Ok(Some(match req.extensions().get::<ClientCommonName>() {
            Some(cn) if node.settings.client_tls.client_cert_auth => Caller {
                user: cn.0.to_string(),
                revision: node.auth.revision(),
            },
            _ => Caller::default(),
        })),
        None => Ok(None),
        Some(t) => match node.auth.resolve(t) {
            Ok(c) => Ok(Some(c)),
            Err(AuthError::InvalidToken) if node.linearizable_barrier().await.is_ok() => {
                Ok(Some(node.auth.resolve(t)?))
            }
            Err(e) => Err(e.into()),
        },
    }
}

fn check(node: &Node, c: &Caller, a: Access, key: &[u8], end: &[u8]) -> Result<(), EtcdError> {
    Ok(node.auth.check(c, a, key, end)?)
}

/// A Range needs READ over its range.
pub fn range(node: &Node, c: &Caller, r: &RangeRequest) -> Result<(), EtcdError> {
    check(node, c, Access::Read, &r.key, &r.range_end)
}

/// A Put needs WRITE on its key, READ too when it asks for the previous value, and (as etcd)
/// WRITE on every key already attached to the lease it attaches the key to.
pub fn put(node: &Node, c: &Caller, r: &PutRequest) -> Result<(), EtcdError> {
    check(node, c, Access::Write, &r.key, &[])?;
    if r.prev_kv {
        check(node, c, Access::Read, &r.key, &[])?;
    }
    if r.lease != 0 {
        lease_keys(node, c, r.lease, Access::Write)?;
    }
    Ok(())
}

/// A DeleteRange needs WRITE over its range, and READ too when it asks for the previous values.
pub fn delete(node: &Node, c: &Caller, r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    check(node, c, Access::Write, &r.key, &r.range_end)?;
    if r.prev_kv {
        check(node, c, Access::Read, &r.key, &r.range_end)?;
    }
    Ok(())
}

/// A Txn needs READ over every compare and what each op in both branches needs.
pub fn txn(node: &Node, c: &Caller, r: &TxnRequest) -> Result<(), EtcdError> {
    for cmp in &r.compare {
        check(node, c, Access::Read, &cmp.key, &cmp.range_end)?;
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(TxnOp::RequestRange(q)) => range(node, c, q)?,
            Some(TxnOp::RequestPut(q)) => put(node, c, q)?,
            Some(TxnOp::RequestDeleteRange(q)) => delete(node, c, q)?,
            Some(TxnOp::RequestTxn(q)) => txn(node, c, q)?,
            None => {}
        }
    }
    Ok(())
}

/// Revoking a lease (or reading its time-to-live) needs `access` on every key attached to it.
pub fn lease_keys(node: &Node, c: &Caller, lease: i64, access: Access) -> Result<(), EtcdError> {
    for key in node.leases.keys(lease).unwrap_or_default() {
        check(node, c, access, &key, &[])?;
    }
    Ok(())
}

/// Only the `root` role administers (compaction, membership, maintenance, auth management).
pub fn admin(node: &Node, c: Option<&Caller>) -> Result<(), EtcdError> {
    match c {
        Some(c) => Ok(node.auth.check_admin(c)?),
        None => Ok(()),
    }
}

/// `op` as proposed for `c`: guarded by the auth revision its permissions were checked at (the
/// current one when authentication was off, so a write that raced with `auth enable` is
/// refused rather than applied unchecked).
pub fn guarded(node: &Node, op: Op, c: Option<&Caller>) -> Op {
    let checked = c.is_some() && node.auth.enabled();
    Op::Guarded {
        auth_revision: c.map_or_else(|| node.auth.revision(), |c| c.revision),
        checked,
        user: c
            .filter(|_| checked)
            .map(|c| c.user.clone())
            .unwrap_or_default(),
        op: Box::new(op),
    }
}
