//! etcd's client API, generated at build time from `proto/` (see `build.rs`).
//!
//! Invariant: the package names (`etcdserverpb`, `mvccpb`, `authpb`, `v3lockpb`, `v3electionpb`) are
//! part of every gRPC method path and must stay exactly as etcd's.

/// etcd's MVCC types: `KeyValue` and `Event`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's authentication types: users, roles, permissions.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's v3 services: KV, Watch, Lease, Cluster, Maintenance, Auth.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's server-side lock service.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's server-side election service.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// oxcd's own peer protocol (raft messages, forwarding, joining), served on the peer port.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod oxcdpeerpb {
    tonic::include_proto!("oxcdpeerpb");
}
