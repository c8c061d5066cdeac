//! Backups in etcd's own format, both ways, with the real etcd 3.5.1 tools: oxcd's snapshot is
//! read by `etcdutl snapshot status` and `etcdctl snapshot status`, restored by `etcdutl
//! snapshot restore` and served by a real etcd; etcd's snapshot is read by `oxcd snapshot
//! status` and restored by `oxcd snapshot restore` into an oxcd cluster. Each side must then
//! serve the same keys (with revisions, versions and history), leases (TTLs and attached keys),
//! users, roles, auth flag and compaction.

use std::process::Command;

use crate::harness::*;

const ROOT: &str = "root:rootpw";

fn oxcd(args: &[&str]) -> Ctl {
    Command::new(oxcd_bin())
        .args(args)
        .output()
        .expect("run oxcd")
        .into()
}

fn ok(c: Ctl) -> Ctl {
    assert!(c.ok, "{c:?}");
    c
}

/// etcdctl as root.
fn ctl(ep: &str, args: &[&str]) -> Ctl {
    let mut a = vec!["--user", ROOT];
    a.extend_from_slice(args);
    etcdctl(ep, &a)
}

/// Fills a cluster with what a backup must carry (up to revision 38); returns a lease ID.
fn fill(ep: &str) -> String {
    for i in 0..30 {
        ok(etcdctl(ep, &["put", &format!("k{i:02}"), &format!("v{i}")]));
    }
    ok(etcdctl(ep, &["put", "k05", "second"]));
    ok(etcdctl(ep, &["put", "k05", "third"]));
    ok(etcdctl(ep, &["del", "k07"]));
    ok(etcdctl(ep, &["put", "big", &"x".repeat(20_000)]));
    let lease = ok(etcdctl(ep, &["lease", "grant", "900"]));
    let id = lease.stdout.split_whitespace().nth(1).expect("lease id");
    ok(etcdctl(
        ep,
        &["put", "leased1", "a", &format!("--lease={id}")],
    ));
    ok(etcdctl(
        ep,
        &["put", "leased2", "b", &format!("--lease={id}")],
    ));
    ok(etcdctl(ep, &["lease", "grant", "1200"]));
    // Compacting at 10 drops k00..k08's older history, keeps k05's revisions after it.
    ok(etcdctl(ep, &["compact", "10"]));
    ok(etcdctl(ep, &["put", "after-compaction", "1"]));
    ok(etcdctl(ep, &["user", "add", "root:rootpw"]));
    ok(etcdctl(ep, &["user", "add", "alice:secret"]));
    ok(etcdctl(ep, &["role", "add", "reader"]));
    ok(etcdctl(
        ep,
        &["role", "grant-permission", "reader", "read", "k", "l"],
    ));
    ok(etcdctl(ep, &["user", "grant-role", "alice", "reader"]));
    ok(etcdctl(ep, &["auth", "enable"]));
    ok(ctl(ep, &["get", "k05", "-w", "json"]));
    id.to_string()
}

/// What a user reads back: keys with revisions and versions, history at a revision after the
/// compaction, the compaction's error below it, leases with granted TTLs and keys, users and
/// roles, and the auth flag. Remaining TTLs are checked separately (time passes).
fn dump(ep: &str) -> Vec<String> {
    let mut out = Vec::new();
    let strip = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s).expect("json");
        v["header"] = serde_json::Value::Null;
        v.to_string()
    };
    out.push(strip(
        &ok(ctl(ep, &["get", "", "--prefix", "-w", "json"])).stdout,
    ));
    out.push(strip(
        &ok(ctl(ep, &["get", "k05", "--rev=33", "-w", "json"])).stdout,
    ));
    let compacted = ctl(ep, &["get", "k05", "--rev=5"]);
    assert!(!compacted.ok);
    out.push(
        compacted
            .stderr
            .lines()
            .last()
            .unwrap_or_default()
            .to_string(),
    );
    let leases = ok(ctl(ep, &["lease", "list"]));
    let mut ids: Vec<&str> = leases.stdout.lines().skip(1).collect();
    ids.sort();
    for id in ids {
        let ttl = ok(ctl(
            ep,
            &["lease", "timetolive", id, "--keys", "-w", "json"],
        ));
        let v: serde_json::Value = serde_json::from_str(&ttl.stdout).expect("json");
        assert!(v["granted-ttl"].as_i64().is_some(), "{v}");
        // etcd lists a lease's keys in no particular order.
        let mut keys: Vec<String> = v["keys"]
            .as_array()
            .map(|a| a.iter().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        keys.sort();
        out.push(format!("lease {id} {} {keys:?}", v["granted-ttl"]));
    }
    for cmd in [
        &["user", "list"][..],
        &["role", "list"],
        &["user", "get", "alice"],
        &["role", "get", "reader"],
        &["auth", "status"],
    ] {
        let r = ok(ctl(ep, cmd));
        // AuthRevision differs by how many auth changes each server counts for `auth enable`.
        out.push(
            r.stdout
                .lines()
                .filter(|l| !l.starts_with("AuthRevision"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    // Users authenticate with their old passwords.
    out.push(
        ok(etcdctl(
            ep,
            &["--user", "alice:secret", "get", "k01", "--print-value-only"],
        ))
        .stdout,
    );
    out
}

/// Asserts two dumps are equal, showing the first difference (shortened) when not.
fn same_dump(got: &[String], want: &[String]) {
    let short = |s: &str| s.chars().take(400).collect::<String>();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w,
            "item {i} differs:\n got: {}\nwant: {}",
            short(g),
            short(w)
        );
    }
}

/// The remaining TTL of lease `id`.
fn remaining(ep: &str, id: &str) -> i64 {
    let ttl = ok(ctl(ep, &["lease", "timetolive", id, "-w", "json"]));
    let v: serde_json::Value = serde_json::from_str(&ttl.stdout).expect("json");
    v["ttl"].as_i64().expect("ttl")
}

fn status_json(c: Ctl) -> serde_json::Value {
    serde_json::from_str(&ok(c).stdout).expect("status json")
}

#[tokio::test]
async fn oxcd_backup_restores_into_a_real_etcd() {
    let src = Cluster::start(3).await;
    let ep = src.endpoints();
    let lease = fill(&ep);
    let before = dump(&ep);
    assert_eq!(before.len(), 11);
    assert!(before[0].contains("bGVhc2VkMg==") && before[5].contains("alice"));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("oxcd.db");
    let file_s = file.display().to_string();
    let save = ctl(&src.members[0].endpoint(), &["snapshot", "save", &file_s]);
    assert!(save.ok, "{save:?}");
    drop(src);

    // etcd's tools read the file, and oxcd summarises it as they do.
    let etcd_status = status_json(etcdutl(&["snapshot", "status", &file_s, "-w", "json"]));
    assert_eq!(etcd_status["revision"], 38, "{etcd_status}");
    let size = std::fs::metadata(&file).expect("stat").len();
    assert_eq!(etcd_status["totalSize"].as_u64(), Some(size - 32));
    let ctl_status = status_json(etcdctl(&ep, &["snapshot", "status", &file_s, "-w", "json"]));
    assert_eq!(ctl_status, etcd_status);
    let ours = status_json(oxcd(&["snapshot", "status", &file_s, "-w", "json"]));
    assert_eq!(ours, etcd_status);
    let table = ok(etcdutl(&["snapshot", "status", &file_s, "-w", "table"]));
    assert_eq!(
        ok(oxcd(&["snapshot", "status", &file_s, "-w", "table"])).stdout,
        table.stdout
    );

    // etcdutl restores it, and a real etcd serves the same data.
    let etcd = Cluster::start_prepared(Kind::Etcd, 1, &[], |spec| {
        ok(etcdutl(&[
            "snapshot",
            "restore",
            &file_s,
            "--name",
            &spec.name,
            "--data-dir",
            &spec.data_dir.display().to_string(),
            "--initial-cluster",
            &spec.initial_cluster,
            "--initial-advertise-peer-urls",
            &spec.peer_url(),
        ]));
    })
    .await;
    let ep = etcd.endpoints();
    same_dump(&dump(&ep), &before);
    let left = remaining(&ep, &lease);
    assert!((800..=900).contains(&left), "remaining TTL {left}");
    // etcd carries on from the restored revision.
    let put = ok(ctl(&ep, &["put", "new", "1", "-w", "json"]));
    let v: serde_json::Value = serde_json::from_str(&put.stdout).expect("json");
    assert_eq!(v["header"]["revision"], 39, "{v}");
}

#[tokio::test]
async fn etcd_backup_restores_into_oxcd() {
    let src = Cluster::start_with(Kind::Etcd, 1, &[]).await;
    let ep = src.endpoints();
    let lease = fill(&ep);
    let before = dump(&ep);
    assert_eq!(before.len(), 11);
    assert!(before[0].contains("bGVhc2VkMg==") && before[5].contains("alice"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("etcd.db");
    let file_s = file.display().to_string();
    ok(ctl(&ep, &["snapshot", "save", &file_s]));
    drop(src);

    let etcd_status = status_json(etcdutl(&["snapshot", "status", &file_s, "-w", "json"]));
    let ours = status_json(oxcd(&["snapshot", "status", &file_s, "-w", "json"]));
    assert_eq!(ours, etcd_status);

    // A damaged file is refused, as etcdutl refuses it.
    let damaged = dir.path().join("damaged.db");
    let mut bytes = std::fs::read(&file).expect("read");
    let n = bytes.len();
    bytes[n - 40] ^= 0xff;
    std::fs::write(&damaged, &bytes).expect("write");
    let refused = oxcd(&[
        "snapshot",
        "restore",
        &damaged.display().to_string(),
        "--data-dir",
        &dir.path().join("nope").display().to_string(),
    ]);
    assert!(!refused.ok);
    assert!(refused.stderr.contains("expected sha256"), "{refused:?}");

    let restored = Cluster::start_prepared(Kind::Oxcd, 3, &[], |spec| {
        ok(oxcd(&[
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
        ]));
    })
    .await;
    let ep = restored.endpoints();
    same_dump(&dump(&ep), &before);
    let left = remaining(&ep, &lease);
    assert!((800..=900).contains(&left), "remaining TTL {left}");
    let put = ok(ctl(&ep, &["put", "new", "1", "-w", "json"]));
    let v: serde_json::Value = serde_json::from_str(&put.stdout).expect("json");
    assert_eq!(v["header"]["revision"], 39, "{v}");
}
