//! oxcd's one integration-test binary: real `oxcd` processes on ephemeral loopback ports, driven by
//! the real `etcdctl` 3.5 and the `etcd-client` crate, and compared side by side with the real etcd.

mod auth;
mod auth_enforce;
mod auth_jwt;
mod chaos;
mod chart;
mod cli;
mod cluster;
mod controller;
mod disk;
mod downgrade;
mod etcd_backup;
mod forward;
mod gateway;
mod harness;
mod k8s;
mod k8s_controller;
mod kubeapi;
mod kv_client;
mod kv_etcdctl;
mod lease;
mod lock_election;
mod netns;
mod ops;
mod partition;
mod persistence;
mod pods;
mod raft_snapshot;
mod rpc_diff;
mod scale;
mod snapshot;
mod tls;
mod watch;
