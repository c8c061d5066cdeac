//! Who may do what, when authentication is on: the caller a request's `token` names, and the
//! key-range permissions each KV request needs.
//!
//! Invariants:
//! - While authentication is off no request is checked (`caller` is `None`).
//! - A transaction needs READ over every compare and, in both branches and every nested
//!   transaction, the permission each op needs, whichever branch would run (as etcd).
//! - Every client write is proposed as [`Op::Guarded`] with the auth revision it was checked at
//!   (or seen at, while authentication is off), so a change to users or roles, or enabling
//!   authentication, that commits first makes it fail instead of applying unchecked.

use tonic::Request;

use super::error::EtcdError;
use crate::apply::Op;
use crate::auth::{Access, Caller};
use crate::node::Node;
use crate::proto::etcdserverpb::{
    request_op::Request as TxnOp, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};

/// The caller of `req`: `None` while authentication is off; otherwise the user its `token`
/// metadata names (an empty user when there is no token, which every check refuses with
/// `user name is empty`).
pub fn caller<T>(node: &Node, req: &Request<T>) -> Result<Option<Caller>, EtcdError> {
    if !node.auth.enabled() {
        return Ok(None);
    }
    match req.metadata().get("token").and_then(|v| v.to_str().ok()) {
        None => Ok(Some(Caller::default())),
        Some(t) => Ok(Some(node.auth.resolve(t)?)),
    }
}

fn check(node: &Node, c: &Caller, a: Access, key: &[u8], end: &[u8]) -> Result<(), EtcdError> {
    Ok(node.auth.check(c, a, key, end)?)
}

/// A Range needs READ over its range.
pub fn range(node: &Node, c: &Caller, r: &RangeRequest) -> Result<(), EtcdError> {
    check(node, c, Access::Read, &r.key, &r.range_end)
}

/// A Put needs WRITE on its key, and READ too when it asks for the previous value.
pub fn put(node: &Node, c: &Caller, r: &PutRequest) -> Result<(), EtcdError> {
    check(node, c, Access::Write, &r.key, &[])?;
    if r.prev_kv {
        check(node, c, Access::Read, &r.key, &[])?;
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
    Op::Guarded {
        auth_revision: c.map_or_else(|| node.auth.revision(), |c| c.revision),
        op: Box::new(op),
    }
}
