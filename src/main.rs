//! The `oxcd` binary: parses etcd's flags, environment and config file, then serves.

use std::process::ExitCode;

use clap::Parser;
use oxcd::config::{Command, Config, Flags, SnapshotCommand};
use oxcd::node::Node;

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
    let flags = Flags::parse();
    if flags.version || matches!(flags.command, Some(Command::Version)) {
        print_version();
        return ExitCode::SUCCESS;
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
    // Everything is checked before the data directory is touched.
    let settings = match Config::load(&flags).and_then(|c| c.validate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oxcd: {e}");
            return ExitCode::from(2);
        }
    };
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
    let result = runtime.block_on(async {
        let r = run(settings).await;
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

/// `oxcd snapshot restore|status`, with etcdutl's flags and output.
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
        SnapshotCommand::Status { file, write_out } => {
            let st = snapshot::status(file)?;
            match write_out.as_str() {
                "json" => println!("{}", serde_json::to_string(&st)?),
                "table" => {
                    let row = [
                        format!("{:x}", st.hash),
                        st.revision.to_string(),
                        st.total_key.to_string(),
                        st.total_size.to_string(),
                    ];
                    let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
                    let widths: Vec<usize> = heads
                        .iter()
                        .zip(&row)
                        .map(|(h, r)| h.len().max(r.len()) + 2)
                        .collect();
                    let line: String = widths
                        .iter()
                        .map(|w| format!("+{}", "-".repeat(*w)))
                        .collect::<String>()
                        + "+";
                    let cells = |vals: &[String]| {
                        vals.iter()
                            .zip(&widths)
                            .map(|(v, w)| format!("|{v:^w$}"))
                            .collect::<String>()
                            + "|"
                    };
                    println!("{line}");
                    println!("{}", cells(&heads.map(str::to_string)));
                    println!("{line}");
                    println!("{}", cells(&row));
                    println!("{line}");
                }
                _ => println!(
                    "{:x}, {}, {}, {}",
                    st.hash, st.revision, st.total_key, st.total_size
                ),
            }
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

async fn run(settings: oxcd::config::Settings) -> Result<(), Box<dyn std::error::Error>> {
    let listeners = oxcd::server::bind(&settings.listen_client).await?;
    let metrics_listeners = oxcd::server::bind(&settings.listen_metrics).await?;
    let node = Node::start(settings).await?;
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
            _ = shutdown_signal() => {},
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
