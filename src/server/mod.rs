//! The client port: one tonic service per etcd service. Services that are not built yet are not
//! registered, so clients get gRPC `Unimplemented` for them.
//!
//! Invariant: handlers only validate, call [`crate::node::Node`] and map errors through
//! [`error`]; they hold no state of their own.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod error;
pub mod guard;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod validate;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::node::Node;
use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;

/// Failures of the client listener.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds every client listen address; binding before serving lets start-up fail fast.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ServeError> {
    let mut out = Vec::new();
    for &addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        out.push(l);
    }
    Ok(out)
}

/// Serves etcd's client API on `listeners` until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let max_recv = (node.settings.max_request_bytes as usize).saturating_add(512 * 1024);
    let kv = KvServer::new(kv::KvService::new(node.clone()))
        .max_decoding_message_size(max_recv)
        .max_encoding_message_size(usize::MAX);
    let cluster = ClusterServer::new(cluster::ClusterService::new(node.clone()));
    let maintenance = MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone()))
        .max_encoding_message_size(usize::MAX);
    let watch = WatchServer::new(watch::WatchService::new(node.clone()))
        .max_decoding_message_size(max_recv)
        .max_encoding_message_size(usize::MAX);
    let lease = LeaseServer::new(lease::LeaseService::new(node.clone()))
        .max_decoding_message_size(max_recv);
    let auth = AuthServer::new(auth::AuthService::new(node.clone()));
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = Vec::new();
    for l in listeners {
        let mut rx = tx.subscribe();
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(kv.clone())
            .add_service(cluster.clone())
            .add_service(maintenance.clone())
            .add_service(watch.clone())
            .add_service(lease.clone())
            .add_service(auth.clone());
        // Accepted sockets get TCP_NODELAY here: tonic applies its own setting only to
        // listeners it binds (without it, small responses wait ~40 ms behind Nagle's algorithm).
        let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
        servers.push(tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.recv().await;
                })
                .await
        }));
    }
    shutdown.await;
    let _ = tx.send(());
    for s in servers {
        match s.await {
            Ok(res) => res?,
            Err(e) => tracing::warn!(error = %e, "server task ended abnormally"),
        }
    }
    Ok(())
}
