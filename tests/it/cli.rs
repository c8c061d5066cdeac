//! The `oxcd` command line as a user meets it: `--version`, defaults, unknown flags and bad values
//! (a clear message, a non-zero exit, and the data directory untouched), `ETCD_*` variables and a
//! `--config-file`.

use std::process::Command;

use crate::harness::{free_port, oxcd_bin, Kind, Member, MemberSpec, LOCALHOST};

fn run_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(oxcd_bin())
        .current_dir(dir)
        .args(args)
        .env_remove("ETCD_NAME")
        .output()
        .expect("run oxcd")
}

#[test]
fn version_prints_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["--version"][..], &["version"][..]] {
        let out = run_in(dir.path(), args);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!("oxcd Version: {}\n", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(text.contains("etcd API Version: 3.5"), "{text}");
    }
    assert!(!dir.path().join("default.oxcd").exists());
}

#[test]
fn bad_flags_exit_nonzero_without_touching_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&[&str], &str)] = &[
        (&["--no-such-flag", "1"], "--no-such-flag"),
        (&["--max-txn-ops=abc"], "max-txn-ops"),
        (
            &["--initial-cluster-state=sideways"],
            "initial-cluster-state",
        ),
        (
            &["--listen-client-urls=ftp://127.0.0.1:1"],
            "listen-client-urls",
        ),
        (&["--heartbeat-interval=-1"], "heartbeat-interval"),
        (
            &["--config-file=/nonexistent/oxcd.yml"],
            "/nonexistent/oxcd.yml",
        ),
        (
            &["--cors=https://a.example"],
            "URL address does not have the form \"host:port\": https://a.example",
        ),
        (
            &["--tls-min-version=TLS1.4"],
            "unexpected TLS version \"TLS1.4\"",
        ),
        (
            &["--unsafe-no-fsync"],
            "--unsafe-no-fsync=\"true\" is not supported by oxcd",
        ),
        (
            &["--force-new-cluster"],
            "--force-new-cluster=\"true\" is not supported by oxcd",
        ),
    ];
    for (args, mention) in cases {
        let out = run_in(dir.path(), args);
        assert!(!out.status.success(), "{args:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(mention),
            "{args:?}: error should name {mention}: {err}"
        );
        assert!(
            !dir.path().join("default.oxcd").exists(),
            "{args:?} created the data directory"
        );
    }
    // A bad ETCD_* variable is refused the same way.
    let out = Command::new(oxcd_bin())
        .current_dir(dir.path())
        .env("ETCD_MAX_REQUEST_BYTES", "lots")
        .output()
        .expect("run oxcd");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ETCD_MAX_REQUEST_BYTES"));
    assert!(!dir.path().join("default.oxcd").exists());
    let out = Command::new(oxcd_bin())
        .current_dir(dir.path())
        .env("ETCD_UNSAFE_NO_FSYNC", "true")
        .output()
        .expect("run oxcd");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("ETCD_UNSAFE_NO_FSYNC=\"true\" is not supported by oxcd"));
    assert!(!dir.path().join("default.oxcd").exists());
}

/// etcd 3.6's names that etcd 3.5.1's help text does not list.
const ETCD_36_NAMES: &[&str] = &[
    "bootstrap-defrag-threshold-megabytes",
    "compact-hash-check-time",
    "compaction-batch-limit",
    "compaction-sleep-interval",
    "corrupt-check-time",
    "discovery-cacert",
    "discovery-cert",
    "discovery-dial-timeout",
    "discovery-endpoints",
    "discovery-insecure-skip-tls-verify",
    "discovery-insecure-transport",
    "discovery-keepalive-time",
    "discovery-keepalive-timeout",
    "discovery-key",
    "discovery-password",
    "discovery-request-timeout",
    "discovery-token",
    "discovery-user",
    "distributed-tracing-address",
    "distributed-tracing-instance-id",
    "distributed-tracing-sampling-rate",
    "distributed-tracing-service-name",
    "downgrade-check-time",
    "enable-distributed-tracing",
    "experimental-warning-unary-request-duration",
    "feature-gates",
    "log-format",
    "max-learners",
    "memory-mlock",
    "peer-skip-client-san-verification",
    "snapshot-catchup-entries",
    "warning-apply-duration",
    "warning-unary-request-duration",
    "watch-progress-notify-interval",
    // Registered by etcd 3.5 but hidden from its help, and later 3.5 releases' additions.
    "client-cert-file",
    "client-key-file",
    "peer-client-cert-file",
    "peer-client-key-file",
    "raft-read-timeout",
    "raft-write-timeout",
    "enable-grpc-gateway",
    "experimental-downgrade-check-time",
    "experimental-memory-mlock",
    "experimental-enable-lease-checkpoint-persist",
    "experimental-compact-hash-check-enabled",
    "experimental-compact-hash-check-time",
    "max-concurrent-streams",
    "listen-client-http-urls",
    "tls-min-version",
    "tls-max-version",
    "experimental-distributed-tracing-sampling-rate",
    "experimental-snapshot-catchup-entries",
    "experimental-stop-grpc-service-on-defrag",
    "experimental-compaction-sleep-interval",
];

/// Every flag name of the real etcd 3.5.1's help text and of etcd 3.6, as a flag, an `ETCD_*`
/// variable and a config-file key, is either taken (an oxcd setting, an alias, or accepted for
/// what oxcd does anyway) or refused by its own name, never as an unknown flag.
#[test]
fn every_etcd_flag_name_is_taken_or_refused_by_name() {
    use clap::Parser;
    use oxcd::config::etcd_names::{check_env, find, translate_file};
    use oxcd::config::{translate_args, Flags, SETTINGS};
    let out = Command::new(crate::harness::etcd_bin())
        .arg("--help")
        .output()
        .expect("run etcd --help");
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names = std::collections::BTreeSet::new();
    for line in help.lines() {
        let Some(rest) = line.trim_start().strip_prefix("--") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    assert!(names.len() >= 85, "too few names in etcd's help: {names:?}");
    names.extend(ETCD_36_NAMES.iter().map(|n| n.to_string()));
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = "probe-value";
    for name in names
        .iter()
        .filter(|n| !["version", "help", "config-file"].contains(&n.as_str()))
    {
        let known = SETTINGS.contains(&name.as_str()) || find(name).is_some();
        assert!(
            known,
            "--{name} is neither an oxcd setting nor handled by name"
        );
        let refused = |e: &str, place: &str| {
            assert!(
                e.starts_with(&format!("{place}=")) && e.contains("is not supported by oxcd"),
                "{place}: {e}"
            );
        };
        // As a flag.
        match translate_args(vec!["oxcd".into(), format!("--{name}={probe}").into()]) {
            Ok((args, _)) => {
                if let Err(e) = Flags::try_parse_from(args) {
                    panic!("--{name} is not accepted: {e}");
                }
            }
            Err(e) => refused(&e, &format!("--{name}")),
        }
        // As an environment variable.
        let var = format!("ETCD_{}", name.to_ascii_uppercase().replace('-', "_"));
        match check_env(std::iter::once((var.clone(), probe.to_string())), SETTINGS) {
            Ok(notices) => assert!(
                notices.iter().all(|n| !n.starts_with("unrecognized")),
                "{var}: {notices:?}"
            ),
            Err(e) => refused(&e, &var),
        }
        // As a config-file key.
        let file = dir.path().join("etcd.yml");
        std::fs::write(&file, format!("{name}: {probe}\n")).expect("write");
        if let Err(e) = translate_file(&file, SETTINGS) {
            refused(&e, &format!("{name} in {}", file.display()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_config_file_configure_the_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let file = dir.path().join("oxcd.yml");
    std::fs::write(
        &file,
        format!(
            "name: fromfile\nlisten-client-urls: http://127.0.0.1:{client}\n\
             advertise-client-urls: http://127.0.0.1:{client}\n\
             listen-peer-urls: http://127.0.0.1:{peer}\n\
             initial-advertise-peer-urls: http://127.0.0.1:{peer}\n\
             initial-cluster: fromfile=http://127.0.0.1:{peer}\nmax-txn-ops: 4\n"
        ),
    )
    .expect("write config");
    let data = dir.path().join("data");
    let mut child = Command::new(oxcd_bin())
        .current_dir(dir.path())
        .arg(format!("--config-file={}", file.display()))
        .env("ETCD_DATA_DIR", &data)
        .env("ETCD_MAX_TXN_OPS", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut child);
    let ep = format!("127.0.0.1:{client}");
    let mut kv = crate::harness::connect(std::slice::from_ref(&ep)).await;
    crate::harness::wait_until(
        "the member to publish its name",
        crate::harness::WAIT,
        || {
            let mut kv = kv.clone();
            async move {
                kv.member_list()
                    .await
                    .map(|l| l.members().iter().any(|m| m.name() == "fromfile"))
                    .unwrap_or(false)
            }
        },
    )
    .await;
    assert!(data.join("member").exists(), "ETCD_DATA_DIR was used");
    // The environment (3) wins over the file (4).
    let ops: Vec<etcd_client::TxnOp> = (0..4)
        .map(|i| etcd_client::TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let e = kv
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .expect_err("4 ops > 3");
    assert!(e.to_string().contains("too many operations"), "{e}");
    let ops: Vec<etcd_client::TxnOp> = (0..3)
        .map(|i| etcd_client::TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    kv.txn(etcd_client::Txn::new().and_then(ops))
        .await
        .expect("3 ops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_and_cluster_ids_match_etcds() {
    // etcd derives IDs from the peer URLs and the token: the same flags give the same IDs.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut spec = MemberSpec {
        name: "infra0".to_string(),
        host: LOCALHOST.to_string(),
        netns: None,
        client_port: free_port(),
        peer_port: port,
        data_dir: dir.path().join("etcd.data"),
        initial_cluster: format!("infra0=http://127.0.0.1:{port}"),
        state: "new".to_string(),
        extra: vec![],
    };
    let etcd = Member::spawn(Kind::Etcd, spec.clone(), dir.path());
    etcd.wait_serving().await;
    let mut ec = etcd.client().await;
    let want = ec.status().await.expect("status");
    let want = want.header().expect("h");
    let (want_member, want_cluster) = (want.member_id(), want.cluster_id());
    drop(etcd);
    spec.data_dir = dir.path().join("oxcd.data");
    let ox = Member::spawn(Kind::Oxcd, spec, dir.path());
    ox.wait_serving().await;
    let mut oc = ox.client().await;
    let got = oc.status().await.expect("status");
    let got = got.header().expect("h");
    assert_eq!(got.member_id(), want_member, "member ID");
    assert_eq!(got.cluster_id(), want_cluster, "cluster ID");
}

/// A `unix://host:port` client URL serves the client API on a socket file named `host:port` in
/// the working directory, as etcd's: etcdctl reaches both servers through it (from that
/// directory), and oxcd removes the socket when it stops.
#[tokio::test]
async fn unix_socket_client_urls_serve_as_etcds() {
    use crate::harness::{etcd_bin, etcdctl_bin, wait_until, WAIT};
    for kind in [Kind::Etcd, Kind::Oxcd] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, p, u) = (free_port(), free_port(), free_port());
        let bin = match kind {
            Kind::Etcd => etcd_bin(),
            Kind::Oxcd => oxcd_bin(),
        };
        let log = std::fs::File::create(dir.path().join("m.log")).expect("log");
        let mut child = Command::new(bin)
            .current_dir(dir.path())
            .args([
                "--data-dir=m".to_string(),
                format!("--listen-client-urls=http://127.0.0.1:{c},unix://localhost:{u}"),
                format!("--advertise-client-urls=http://127.0.0.1:{c}"),
                format!("--listen-peer-urls=http://127.0.0.1:{p}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"),
                format!("--initial-cluster=default=http://127.0.0.1:{p}"),
            ])
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn the server");
        let ctl = |args: &[&str]| -> crate::harness::Ctl {
            Command::new(etcdctl_bin())
                .current_dir(dir.path())
                .arg(format!("--endpoints=unix://localhost:{u}"))
                .arg("--dial-timeout=3s")
                .args(args)
                .output()
                .expect("run etcdctl")
                .into()
        };
        wait_until("the unix socket to serve", WAIT, || {
            let ok = ctl(&["put", "k", "v"]).ok;
            async move { ok }
        })
        .await;
        assert_eq!(
            ctl(&["get", "k", "--print-value-only"]).stdout,
            "v\n",
            "{kind:?}"
        );
        let socket = dir.path().join(format!("localhost:{u}"));
        assert!(
            socket.exists(),
            "{kind:?}: the socket is a file named host:port"
        );
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
        if kind == Kind::Oxcd {
            assert!(!socket.exists(), "oxcd removes its socket when it stops");
        }
    }
}
