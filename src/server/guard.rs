//! Checks every handler runs first: etcd's `hasleader` metadata (fail fast without a leader) and
//! the learner restriction (a learner serves only Status and serializable Range).

use tonic::Request;

use super::error::EtcdError;
use crate::node::Node;

/// Fails with `etcdserver: no leader` when the client asked for a leader (`hasleader: true`, as
/// clientv3's `WithRequireLeader` and kube-apiserver do) and none is known.
pub fn require_leader<T>(node: &Node, req: &Request<T>) -> Result<(), EtcdError> {
    if wants_leader(req) && node.raft.known_leader().is_none() {
        return Err(EtcdError::NoLeader);
    }
    Ok(())
}

/// Whether the client asked for a leader with the `hasleader: true` metadata.
pub fn wants_leader<T>(req: &Request<T>) -> bool {
    /// Parsed once: a lookup by `&str` parses the name on every request.
    const HAS_LEADER: http::HeaderName = http::HeaderName::from_static("hasleader");
    AsRef::<http::HeaderMap>::as_ref(req.metadata())
        .get(HAS_LEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Fails with `etcdserver: rpc not supported for learner` on a learner.
pub fn not_learner(node: &Node) -> Result<(), EtcdError> {
    if node.raft.is_learner() {
        return Err(EtcdError::LearnerNotSupported);
    }
    Ok(())
}

/// Both checks, for an RPC a learner does not serve.
pub fn voter_rpc<T>(node: &Node, req: &Request<T>) -> Result<(), EtcdError> {
    require_leader(node, req)?;
    not_learner(node)
}
