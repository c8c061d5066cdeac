//! Kubernetes: a member that runs in a StatefulSet derives its identity from its pod, creates or
//! joins the cluster on its own before its node starts, and promotes itself once caught up.
//!
//! Layering: the top layer. It talks to other members only through the etcd client API
//! ([`client`]), never to their internals; from this member it reads only the identity saved in
//! its data directory. `main` runs [`join::prepare`] before the node starts and
//! [`join::promote_self`] after.
//!
//! Invariants:
//! - Pod identity only supplies defaults: etcd's flags, `ETCD_*` variables and the config file
//!   override every derived value ([`identity`]).
//! - Membership changes made here are one at a time and idempotent across crashes: a new member
//!   joins as a learner, a member is never removed because its pod restarted or vanished, data is
//!   never deleted ([`join`]).

pub mod client;
pub mod identity;
pub mod join;
pub mod ops;
