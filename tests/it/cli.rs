//! The `oxcd` command line as a user meets it: `--version`, defaults, unknown flags and bad values
//! (a clear message, a non-zero exit, and the data directory untouched), `ETCD_*` variables and a
//! `--config-file`.

use std::process::Command;

use crate::harness::{free_port, oxcd_bin, Kind, Member, MemberSpec};

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
