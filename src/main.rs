//! The `oxcd` binary: parses etcd's flags, environment and config file, then serves.

use std::process::ExitCode;

use clap::Parser;
use oxcd::config::{
    ClientFlags, Command, Config, EndpointCommand, Flags, Settings, SnapshotCommand,
};
use oxcd::controller::client::ClientOptions;
use oxcd::controller::identity::PodIdentity;
use oxcd::controller::join::{self, Start};
use oxcd::node::Node;

/// mimalloc instead of glibc's malloc: the request path allocates many small, short-lived
/// buffers (protobuf messages, HTTP/2 frames, log entries) across threads, where glibc's arenas
/// cost about a tenth of the server's CPU time (perf, 100 concurrent puts) and fragment.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn print_version() {
    println!("oxcd Version: {}", oxcd::VERSION);
    println!("etcd API Version: {}", oxcd::ETCD_API_VERSION);
    println!(
        "Rust OS/Arch: {}/{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
}

fn main() -> ExitCode {
    // Transparent huge pages off for this process: mimalloc asks for them on its arenas, and with
    // them a few live bytes keep 2 MiB resident (with THP: 11 MiB more at idle, and 0.68 instead
    // of 0.62 of etcd's memory with 100,000 keys). Databases commonly run without THP; a kernel
    // that cannot turn it off leaves it on, which changes nothing else.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let (args, arg_notices) = match oxcd::config::translate_args(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("oxcd: {e}");
            return ExitCode::from(2);
        }
    };
    let flags = Flags::parse_from(args);
    if flags.version || matches!(flags.command, Some(Command::Version)) {
        print_version();
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Endpoint {
        command: EndpointCommand::Health { client },
    }) = &flags.command
    {
        return client_command(|rt| {
            rt.block_on(oxcd::controller::ops::endpoint_health(
                &client.endpoints,
                &client_options(client)?,
            ))
            .map_err(Into::into)
        });
    }
    if let Some(Command::Snapshot { command }) = &flags.command {
        return match snapshot_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // In a StatefulSet, the pod's identity supplies defaults under everything the user gave.
    let pod = match PodIdentity::from_process_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("oxcd: {e}");
            return ExitCode::from(2);
        }
    };
    let platform = pod.as_ref().map(PodIdentity::settings).unwrap_or_default();
    // Everything is checked before the data directory is touched.
    let (config, settings) =
        match Config::load_over(&flags, &platform).and_then(|c| c.validate().map(|s| (c, s))) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("oxcd: {e}");
                return ExitCode::from(2);
            }
        };
    // A cluster the user laid out with etcd's own settings is started as given.
    let pod = pod.filter(|_| {
        config.initial_cluster.is_empty() && config.initial_cluster_state.trim() == "new"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oxcd: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The span exporter runs on the runtime: install logging inside it.
    let entered = runtime.enter();
    if let Err(e) = oxcd::telemetry::init(
        &settings.log_level,
        &settings.log_outputs,
        settings.tracing.as_ref(),
    ) {
        eprintln!("oxcd: {e}");
        return ExitCode::from(2);
    }
    drop(entered);
    for notice in arg_notices.iter().chain(&settings.notices) {
        tracing::warn!("{notice}");
    }
    // Test builds only (the `failpoints` feature): the points named in FAILPOINTS.
    let _failpoints = oxcd::failpoint::setup();
    let result = runtime.block_on(async {
        let r = match &pod {
            Some(pod) => match prepare_pod(pod, config, settings).await {
                Ok(settings) => run(settings, Some(pod)).await,
                Err(e) => Err(e),
            },
            None => run(settings, None).await,
        };
        oxcd::telemetry::shutdown();
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "oxcd stopped");
            eprintln!("oxcd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `oxcd snapshot save|restore|status`, with etcdctl's and etcdutl's flags and output.
fn snapshot_command(cmd: &SnapshotCommand) -> Result<(), Box<dyn std::error::Error>> {
    use oxcd::node::snapshot;
    match cmd {
        SnapshotCommand::Restore {
            file,
            data_dir,
            name,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
        } => {
            let listed = initial_cluster.split(',').any(|m| {
                m.split_once('=').is_some_and(|(n, url)| {
                    n.trim() == name
                        && initial_advertise_peer_urls
                            .split(',')
                            .any(|u| u.trim() == url.trim())
                })
            });
            if !listed {
                return Err(format!(
                    "--initial-cluster has no {name}={initial_advertise_peer_urls}: it must list this member with its --initial-advertise-peer-urls"
                )
                .into());
            }
            let dir = data_dir
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from(format!("{name}.oxcd")));
            let st = snapshot::restore(file, &dir, skip_hash_check.unwrap_or(false))?;
            println!(
                "restored snapshot {} (revision {}, {} rows) into {}; start the member with --name={name} --initial-cluster={initial_cluster} --initial-cluster-token={initial_cluster_token} --initial-advertise-peer-urls={initial_advertise_peer_urls} --initial-cluster-state=new",
                file.display(),
                st.revision,
                st.total_key,
                dir.display()
            );
            Ok(())
        }
        SnapshotCommand::Save { file, client } => {
            let endpoint = client
                .endpoints
                .first()
                .ok_or("--endpoints must name an endpoint")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let bytes = rt.block_on(oxcd::controller::ops::snapshot_save(
                endpoint,
                file,
                &client_options(client)?,
            ))?;
            println!("Snapshot saved at {} ({bytes} bytes)", file.display());
            Ok(())
        }
        SnapshotCommand::Status { file, write_out } => {
            let st = snapshot::status(file)?;
            print!("{}", st.render(write_out)?);
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs a client command on its own small runtime; exit 1 with the error on failure.
fn client_command(
    f: impl FnOnce(&tokio::runtime::Runtime) -> Result<(), Box<dyn std::error::Error>>,
) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|rt| f(&rt));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Client options from etcdctl-style flags; a `root` user's password may come from
/// `OXCD_ROOT_PASSWORD` (as the chart's jobs get it).
fn client_options(c: &ClientFlags) -> Result<ClientOptions, Box<dyn std::error::Error>> {
    let user = match c.user.as_deref() {
        None => None,
        Some(u) => match u.split_once(':') {
            Some((name, password)) => Some((name.to_string(), password.to_string())),
            None => {
                let password = std::env::var(oxcd::controller::identity::env::ROOT_PASSWORD)
                    .map_err(|_| {
                        format!("--user {u}: give username:password, or set OXCD_ROOT_PASSWORD")
                    })?;
                Some((u.to_string(), password))
            }
        },
    };
    let cert_key = match (&c.cert, &c.key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    Ok(ClientOptions {
        ca: c.cacert.clone(),
        cert_key,
        insecure: c.insecure_skip_tls_verify,
        user,
        timeout: std::time::Duration::from_secs(c.command_timeout_seconds.max(1)),
    })
}

/// How a member in a StatefulSet dials the other members: its own client TLS settings, and user
/// root when the chart set a root password.
fn pod_client_options(settings: &Settings, pod: &PodIdentity) -> ClientOptions {
    let tls = &settings.client_tls;
    ClientOptions {
        ca: tls.trusted_ca_file.clone(),
        cert_key: match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) if tls.client_cert_auth => Some((c.clone(), k.clone())),
            _ => None,
        },
        insecure: tls.trusted_ca_file.is_none(),
        user: pod.root_password.clone().map(|p| ("root".to_string(), p)),
        timeout: std::time::Duration::from_secs(2),
    }
}

/// Decides, from pod identity and the running cluster, how this member starts (see
/// `oxcd::controller::join`), and returns the settings to start it with.
async fn prepare_pod(
    pod: &PodIdentity,
    mut config: Config,
    settings: Settings,
) -> Result<Settings, Box<dyn std::error::Error>> {
    let opts = pod_client_options(&settings, pod);
    let start = join::prepare(pod, &settings.data_dir, settings.max_learners, &opts).await?;
    match start {
        Start::OnData => return Ok(settings),
        Start::Bootstrap { initial_cluster } => {
            config.initial_cluster = initial_cluster;
            config.initial_cluster_state = "new".to_string();
        }
        Start::Join { initial_cluster } => {
            config.initial_cluster = initial_cluster;
            config.initial_cluster_state = "existing".to_string();
        }
    }
    Ok(config.validate()?)
}

/// The membership controller when running in a StatefulSet with a Kubernetes API (see
/// `oxcd::controller::manager`); its loop runs until the process ends.
#[cfg(feature = "controller")]
fn start_controller(
    node: &Node,
    pod: Option<&PodIdentity>,
    opts: Option<&ClientOptions>,
) -> Option<ControllerHandle> {
    let own = node.settings.advertise_client_urls.first()?.clone();
    let c = std::sync::Arc::new(oxcd::controller::manager::Controller::from_env(
        pod?,
        opts?.clone(),
        own,
    )?);
    let task = tokio::spawn(c.clone().run(std::future::pending()));
    Some(ControllerHandle {
        controller: c,
        task,
    })
}

#[cfg(not(feature = "controller"))]
fn start_controller(
    _node: &Node,
    _pod: Option<&PodIdentity>,
    _opts: Option<&ClientOptions>,
) -> Option<ControllerHandle> {
    None
}

/// The running membership controller.
struct ControllerHandle {
    #[cfg(feature = "controller")]
    controller: std::sync::Arc<oxcd::controller::manager::Controller>,
    #[cfg(feature = "controller")]
    task: tokio::task::JoinHandle<()>,
}

impl ControllerHandle {
    /// On SIGTERM: stop reconciling, and leave the cluster if this ordinal is no longer wanted.
    async fn leave(&self) {
        #[cfg(feature = "controller")]
        {
            self.task.abort();
            self.controller
                .leave_if_unwanted(std::time::Duration::from_secs(20))
                .await;
        }
    }
}

async fn run(
    settings: Settings,
    pod: Option<&PodIdentity>,
) -> Result<(), Box<dyn std::error::Error>> {
    let listeners = oxcd::server::bind(&settings.listen_client).await?;
    let metrics_listeners = oxcd::server::bind(&settings.listen_metrics).await?;
    let pod_opts = pod.map(|p| pod_client_options(&settings, p));
    let node = Node::start(settings).await?;
    if node.settings.initial_corrupt_check {
        if let Err(e) = oxcd::node::corrupt::check_initial(&node).await {
            node.shutdown().await;
            return Err(e.into());
        }
    }
    let controller = start_controller(&node, pod, pod_opts.as_ref());
    if let (Some(pod), Some(opts)) = (pod.cloned(), pod_opts) {
        // Without a controller, a member that joined as a learner asks for its promotion once it
        // is in sync; with a root password, authentication is turned on.
        let member_id = node.identity.member_id.0;
        let own = node.settings.advertise_client_urls.clone();
        let promote = controller.is_none();
        tokio::spawn(async move {
            if promote {
                join::promote_self(&pod, member_id, &opts, &own).await;
            }
            if let Some(first) = own.first() {
                join::bootstrap_auth(&pod, first, &opts).await;
            }
        });
    }
    let addrs: Vec<String> = node
        .settings
        .listen_client
        .iter()
        .map(|a| a.to_string())
        .collect();
    tracing::info!(
        member_id = %node.identity.member_id,
        cluster_id = %node.identity.cluster_id,
        listen = ?addrs,
        "ready to serve client requests"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<String>();
    let watch_node = node.clone();
    tokio::spawn(async move {
        tokio::select! {
            reason = watch_node.raft.stopped() => {
                if let Some(reason) = reason {
                    let _ = stop_tx.send(format!("raft stopped: {reason}"));
                }
            }
            _ = watch_node.raft.removed() => {
                let _ = stop_tx.send(format!(
                    "the member {} has been permanently removed from the cluster",
                    watch_node.identity.member_id
                ));
            }
        }
    });
    let fatal = std::sync::Arc::new(parking_lot::Mutex::new(None::<String>));
    let fatal_set = fatal.clone();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown_signal() => {
                // Scale-down: a member whose ordinal is no longer wanted leaves before it goes.
                if let Some(c) = &controller {
                    c.leave().await;
                }
            },
            reason = stop_rx => {
                if let Ok(r) = reason {
                    *fatal_set.lock() = Some(r);
                }
            }
        }
    };
    let services = oxcd::server::Services::new(node.clone());
    let gateway = oxcd::gateway::routes(&services);
    oxcd::server::serve(services, listeners, metrics_listeners, gateway, shutdown).await?;
    node.shutdown().await;
    let reason = fatal.lock().take();
    match reason {
        Some(r) => Err(r.into()),
        None => Ok(()),
    }
}
