//! Disk faults: a data directory on a small filesystem that fills up, and a failing fsync.
//!
//! A full disk must refuse writes with etcd's NOSPACE behaviour (the alarm, `database space
//! exceeded`), keep every acknowledged write, and take writes again once space is freed and the
//! alarm disarmed. A failed fsync must stop the member: nothing written since the last good sync
//! can be trusted, and a member that carried on could acknowledge writes it then loses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmOptions, AlarmType};

use crate::harness::{fill_incompressible, Cluster, WAIT};

/// A tmpfs of a fixed size, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(mib: u64) -> SmallFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Free bytes, as `df` reports them.
    fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(self.path())
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df's answer")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Takes all but `leave` bytes of the filesystem's free space with one file.
fn ballast(fs: &SmallFs, leave: u64) -> PathBuf {
    let p = fs.path().join("ballast");
    let size = fs.available().saturating_sub(leave);
    assert!(size > 0, "only {} bytes free", fs.available());
    let st = Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(&p)
        .status()
        .expect("fallocate");
    assert!(st.success(), "fallocate {size}");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_raises_nospace_loses_nothing_and_recovers_once_space_is_freed() {
    // 384 MiB: the member keeps 128 MiB free (its reserve on a small disk).
    let fs = SmallFs::new(384);
    let data = fs.path().join("data");
    let mut c = Cluster::start_prepared(crate::harness::Kind::Oxcd, 1, &[], |_| {}).await;
    // Moved onto the small filesystem: stopped, data directory pointed there, started.
    c.members[0].kill();
    c.members[0].spec.data_dir = data.clone();
    c.members[0].spec.state = "new".to_string();
    c.members[0].start();
    c.members[0].wait_serving().await;
    let mut kv = c.members[0].client().await;
    let ballast = ballast(&fs, (128 + 24) << 20);

    // Writes of 256 KiB until the member refuses; every acknowledged one is remembered.
    let value = |i: usize| {
        let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (0..256 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..400 {
        match kv.put(format!("big/{i:04}"), value(i), None).await {
            Ok(_) => acked.push(i),
            Err(e) => {
                refusal = Some(e.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("the member never refused a write on a full disk");
    assert!(
        refusal.contains("etcdserver: mvcc: database space exceeded"),
        "{refusal}"
    );
    assert!(
        acked.len() > 10,
        "only {} writes before the refusal",
        acked.len()
    );
    assert!(c.members[0].running(), "{}", c.members[0].log());
    let alarms = kv
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarms");
    assert!(
        alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == AlarmType::Nospace),
        "no NOSPACE alarm raised"
    );
    // Reads still work, and deletes (as with etcd's NOSPACE).
    let r = kv.get("big/0000", None).await.expect("read on a full disk");
    assert_eq!(r.kvs()[0].value(), value(0).as_slice());
    kv.delete("big/0001", None)
        .await
        .expect("delete on a full disk");

    // Space comes back; the operator disarms; writes work again and nothing was lost.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    let member = alarms.alarms()[0].member_id();
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    kv.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
        .await
        .expect("disarm");
    let deadline = std::time::Instant::now() + WAIT;
    while let Err(e) = kv.put("after", "v", None).await {
        assert!(
            std::time::Instant::now() < deadline,
            "writes never taken again after the disarm: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.members[0].kill();
    c.members[0].start();
    c.members[0].wait_serving().await;
    let mut kv = c.members[0].client().await;
    for &i in &acked {
        let r = kv.get(format!("big/{i:04}"), None).await.expect("read");
        if i == 1 {
            assert!(r.kvs().is_empty(), "the deleted key came back");
        } else {
            assert_eq!(r.kvs().len(), 1, "acknowledged write big/{i:04} lost");
            assert!(
                r.kvs()[0].value() == value(i).as_slice(),
                "big/{i:04} corrupted"
            );
        }
    }
    fill_incompressible(&mut kv, "more/", 10, 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_stops_the_member_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(1).await;
    c.members[0].kill();
    // The log's sync fails on its 31st pass (after the member's own start-up entries).
    c.members[0].env = vec![(
        "FAILPOINTS".to_string(),
        "raft-log-sync-error=30*off->return".to_string(),
    )];
    c.members[0].start();
    c.members[0].wait_serving().await;
    let mut kv = c.members[0].client().await;
    let mut acked = Vec::new();
    for i in 0..200 {
        let put = tokio::time::timeout(Duration::from_secs(5), kv.put(format!("k{i}"), "v", None));
        match put.await {
            Ok(Ok(_)) => acked.push(i),
            _ => break,
        }
    }
    assert!(acked.len() < 200, "the failing fsync was never reached");
    let exited = c.members[0].wait_exit(WAIT).await;
    assert_eq!(
        exited,
        Some(false),
        "the member carried on after a failed fsync"
    );
    let log = c.members[0].log();
    assert!(
        log.contains("failpoint raft-log-sync-error: failing"),
        "{log}"
    );
    assert!(log.contains("raft stopped"), "{log}");
    c.members[0].env.clear();
    c.members[0].start();
    c.members[0].wait_serving().await;
    let mut kv = c.members[0].client().await;
    for i in acked {
        let r = kv.get(format!("k{i}"), None).await.expect("read");
        assert_eq!(r.kvs().len(), 1, "acknowledged write k{i} lost");
    }
    kv.put("after", "v", None)
        .await
        .expect("write after the restart");
}
