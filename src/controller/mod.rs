//! Kubernetes: a member that runs in a StatefulSet derives its identity from its pod and creates or
//! joins the cluster on its own before its node starts ([`join`]); the membership controller
//! ([`manager`], on the raft leader) then promotes learners, removes unwanted ordinals and rolls
//! upgrades one member at a time, deciding each step with the pure [`reconcile::decide`].
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
//!   joins as a learner, a member is never removed because its pod restarted or vanished while
//!   its ordinal is wanted, data is never deleted ([`join`], [`reconcile`]).
//! - `kube` and `k8s-openapi` are used only in [`kube_api`] and [`manager`], behind the default
//!   `controller` feature.

pub mod client;
pub mod identity;
pub mod join;
#[cfg(feature = "controller")]
pub mod kube_api;
#[cfg(feature = "controller")]
pub mod manager;
pub mod ops;
pub mod reconcile;
