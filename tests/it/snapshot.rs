//! Backups: `etcdctl snapshot save` from a running cluster, `oxcd snapshot status`, and
//! `oxcd snapshot restore` into a fresh three-member cluster that serves the same data.

use std::process::Command;

use crate::harness::*;

fn oxcd(args: &[&str]) -> Ctl {
    Command::new(oxcd_bin())
        .args(args)
        .output()
        .expect("run oxcd")
        .into()
}

/// Everything a user can read: every key with its revisions, and the leases with their keys.
async fn contents(c: &Cluster) -> (String, Vec<(i64, Vec<String>)>) {
    let all = etcdctl(&c.endpoints(), &["get", "", "--prefix", "-w", "json"]);
    assert!(all.ok, "{all:?}");
    let mut v: serde_json::Value = serde_json::from_str(&all.stdout).expect("json");
    v["header"] = serde_json::Value::Null;
    let mut client = c.client().await;
    let mut leases = Vec::new();
    for l in client.leases().await.expect("leases").leases() {
        let ttl = client
            .lease_time_to_live(
                l.id(),
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .expect("time to live");
        let mut keys: Vec<String> = ttl
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).to_string())
            .collect();
        keys.sort();
        leases.push((l.id(), keys));
    }
    leases.sort();
    (v.to_string(), leases)
}

#[tokio::test]
async fn snapshot_save_and_restore_into_a_fresh_cluster() {
    let src = Cluster::start(3).await;
    let ep = src.endpoints();
    for i in 0..20 {
        assert!(etcdctl(&ep, &["put", &format!("k{i:02}"), &format!("v{i}")]).ok);
    }
    assert!(etcdctl(&ep, &["put", "k05", "overwritten"]).ok);
    assert!(etcdctl(&ep, &["del", "k07"]).ok);
    let lease = etcdctl(&ep, &["lease", "grant", "600"]);
    let id = lease
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    assert!(etcdctl(&ep, &["put", "leased", "x", &format!("--lease={id}")]).ok);
    assert!(etcdctl(&ep, &["user", "add", "alice:secret"]).ok);
    let before = contents(&src).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let file_s = file.display().to_string();
    let save = etcdctl(&src.members[0].endpoint(), &["snapshot", "save", &file_s]);
    assert!(save.ok, "{save:?}");
    assert_eq!(save.stdout, format!("Snapshot saved at {file_s}\n"));
    drop(src);

    let status = oxcd(&["snapshot", "status", &file_s, "-w", "json"]);
    assert!(status.ok, "{status:?}");
    let st: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
    assert!(st["revision"].as_i64().unwrap_or(0) >= 23, "{st}");
    // The database's size, without etcd's 32-byte checksum after it (as etcdutl reports it).
    assert_eq!(
        st["totalSize"].as_u64(),
        std::fs::metadata(&file).ok().map(|m| m.len() - 32)
    );

    // A damaged copy is refused, unless the check is skipped on purpose.
    let damaged = dir.path().join("damaged.db");
    let mut bytes = std::fs::read(&file).expect("read snapshot");
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&damaged, &bytes).expect("write");
    let refused = oxcd(&[
        "snapshot",
        "restore",
        &damaged.display().to_string(),
        "--data-dir",
        &dir.path().join("nope").display().to_string(),
    ]);
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("snapshot file integrity check failed"),
        "{refused:?}"
    );

    // Restore each member of a new cluster from the file, then start it.
    let restored = Cluster::start_prepared(Kind::Oxcd, 3, &[], |spec| {
        let out = oxcd(&[
            "snapshot",
            "restore",
            &file_s,
            "--name",
            &spec.name,
            "--data-dir",
            &spec.data_dir.display().to_string(),
            "--initial-cluster",
            &spec.initial_cluster,
            "--initial-cluster-token",
            "it-cluster",
            "--initial-advertise-peer-urls",
            &spec.peer_url(),
        ]);
        assert!(out.ok, "restore failed: {out:?}");
    })
    .await;
    let after = contents(&restored).await;
    assert_eq!(before, after);
    let ep = restored.endpoints();
    // The restored cluster is a new cluster with the old data: it takes writes at the next
    // revision, knows the users, and keeps a restored lease's keys until it is revoked.
    let members = etcdctl(&ep, &["member", "list"]);
    assert_eq!(members.stdout.lines().count(), 3, "{members:?}");
    assert!(etcdctl(&ep, &["user", "get", "alice"]).ok);
    assert!(etcdctl(&ep, &["put", "new", "1"]).ok);
    let revoke = etcdctl(&ep, &["lease", "revoke", &id]);
    assert!(revoke.ok, "{revoke:?}");
    assert_eq!(etcdctl(&ep, &["get", "leased"]).stdout, "");
    // Restoring into an existing data directory is refused.
    let again = oxcd(&[
        "snapshot",
        "restore",
        &file_s,
        "--name",
        "m1",
        "--data-dir",
        &restored.members[0].spec.data_dir.display().to_string(),
        "--initial-cluster",
        &restored.members[0].spec.initial_cluster,
        "--initial-advertise-peer-urls",
        &restored.members[0].spec.peer_url(),
    ]);
    assert!(!again.ok);
    assert!(again.stderr.contains("exists"), "{again:?}");
}
