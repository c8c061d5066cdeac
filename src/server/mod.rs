//! The client port: one tonic service per etcd service, with the HTTP endpoints beside them on
//! the same listener ([`http`]). Services that are not built yet are not registered, so clients
//! get gRPC `Unimplemented` for them.
//!
//! Invariant: handlers only validate, call [`crate::node::Node`] and map errors through
//! [`error`]; they hold no state of their own.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod coalesce;
pub mod election;
pub mod error;
pub mod guard;
pub mod http;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
mod pprof;
pub mod recipe;
pub mod validate;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

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
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A listen address could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A unix socket could not be bound.
    #[error("listen on unix socket {path}: {source}")]
    BindUnix {
        /// The socket's path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Binds the unix sockets of `unix://` client URLs: a file named after the URL's host and port
/// in the working directory, whatever was there removed first (as etcd does).
pub fn bind_unix(
    paths: &[std::path::PathBuf],
) -> Result<Vec<(tokio::net::UnixListener, std::path::PathBuf)>, ServeError> {
    let mut out = Vec::new();
    for path in paths {
        let err = |source| ServeError::BindUnix {
            path: path.display().to_string(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        out.push((
            tokio::net::UnixListener::bind(path).map_err(err)?,
            path.clone(),
        ));
    }
    Ok(out)
}

/// One instance of each service, shared by gRPC and the JSON gateway (the auth service keeps the
/// simple-token counter and the dummy password hash).
#[derive(Clone, Debug)]
pub struct Services {
    /// The member.
    pub node: Arc<Node>,
    /// KV.
    pub kv: kv::KvService,
    /// Lease.
    pub lease: lease::LeaseService,
    /// Cluster.
    pub cluster: cluster::ClusterService,
    /// Maintenance.
    pub maintenance: maintenance::MaintenanceService,
    /// Auth.
    pub auth: auth::AuthService,
    /// Watch.
    pub watch: watch::WatchService,
    /// Lock (v3lockpb).
    pub lock: lock::LockService,
    /// Election (v3electionpb).
    pub election: election::ElectionService,
}

impl Services {
    /// The services over `node`.
    pub fn new(node: Arc<Node>) -> Services {
        Services {
            kv: kv::KvService::new(node.clone()),
            lease: lease::LeaseService::new(node.clone()),
            cluster: cluster::ClusterService::new(node.clone()),
            maintenance: maintenance::MaintenanceService::new(node.clone()),
            auth: auth::AuthService::new(node.clone()),
            watch: watch::WatchService::new(node.clone()),
            lock: lock::LockService::new(node.clone()),
            election: election::ElectionService::new(node.clone()),
            node,
        }
    }
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

/// Serves etcd's client API (gRPC, and HTTP with the `gateway` routes) on `listeners`, and the
/// HTTP endpoints alone on `metrics_listeners` (`--listen-metrics-urls`), until `shutdown`
/// resolves.
pub async fn serve(
    services: Services,
    listeners: Vec<TcpListener>,
    metrics_listeners: Vec<TcpListener>,
    gateway: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let node = services.node.clone();
    let max_recv = (node.settings.max_request_bytes as usize).saturating_add(512 * 1024);
    let kv = KvServer::new(services.kv)
        .max_decoding_message_size(max_recv)
        .max_encoding_message_size(usize::MAX);
    let cluster = ClusterServer::new(services.cluster);
    let maintenance =
        MaintenanceServer::new(services.maintenance).max_encoding_message_size(usize::MAX);
    let watch = WatchServer::new(services.watch)
        .max_decoding_message_size(max_recv)
        .max_encoding_message_size(usize::MAX);
    let lease = LeaseServer::new(services.lease).max_decoding_message_size(max_recv);
    let auth = AuthServer::new(services.auth);
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(report_health(node.clone(), reporter));
    let kv_direct = kv.clone();
    let grpc = tonic::service::Routes::new(kv)
        .add_service(cluster)
        .add_service(maintenance)
        .add_service(watch)
        .add_service(lease)
        .add_service(auth)
        .add_service(crate::proto::v3lockpb::lock_server::LockServer::new(
            services.lock,
        ))
        .add_service(
            crate::proto::v3electionpb::election_server::ElectionServer::new(services.election),
        )
        .add_service(health);
    let access = http::HttpAccess {
        controlled: true,
        cors: node.settings.cors.clone(),
        host_whitelist: node.settings.host_whitelist.clone(),
    };
    let client =
        http::ClientService::new(grpc, http::http_routes(node.clone()).merge(gateway), access)
            .with_kv(kv_direct);
    // etcd's metrics listener has no access controller: no CORS headers, no host check.
    let metrics_only = http::ClientService::new(
        tonic::service::Routes::default(),
        http::metrics_routes(node.clone()),
        http::HttpAccess::default(),
    );
    let settings = &node.settings;
    let needs_tls = settings
        .listen_client_tls
        .iter()
        .chain(&settings.listen_metrics_tls)
        .any(|t| *t);
    let acceptor = if needs_tls {
        let hosts = crate::tls::hosts_of(&settings.advertise_client_urls);
        let config = crate::tls::server_config(
            &settings.client_tls,
            &settings.data_dir.join("fixtures").join("client"),
            &hosts,
            "",
            &[b"h2", b"http/1.1"],
        )?;
        Some(tokio_rustls::TlsAcceptor::from(config))
    } else {
        None
    };
    let tls_for = |flags: &[bool], i: usize| {
        if flags.get(i).copied().unwrap_or(false) {
            acceptor.clone()
        } else {
            None
        }
    };
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = Vec::new();
    let mut all = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        all.push((l, client.clone(), tls_for(&settings.listen_client_tls, i)));
    }
    for (i, l) in metrics_listeners.into_iter().enumerate() {
        all.push((
            l,
            metrics_only.clone(),
            tls_for(&settings.listen_metrics_tls, i),
        ));
    }
    for (l, path) in bind_unix(&settings.listen_client_unix)? {
        let mut rx = tx.subscribe();
        servers.push(tokio::spawn(http::serve_unix_listener(
            l,
            path,
            client.clone(),
            async move {
                let _ = rx.recv().await;
            },
        )));
    }
    for (l, svc, tls) in all {
        let mut rx = tx.subscribe();
        servers.push(tokio::spawn(http::serve_listener(
            l,
            svc,
            tls,
            async move {
                let _ = rx.recv().await;
            },
        )));
    }
    shutdown.await;
    let _ = tx.send(());
    health_task.abort();
    for s in servers {
        if let Err(e) = s.await {
            tracing::warn!(error = %e, "server task ended abnormally");
        }
    }
    Ok(())
}

/// Keeps `grpc.health.v1` in step with the member: SERVING while it knows a leader.
async fn report_health(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    let mut changes = node.raft.leader_changes();
    let mut last = None;
    loop {
        let serving = node.raft.known_leader().is_some();
        if last != Some(serving) {
            let status = if serving {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            last = Some(serving);
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
