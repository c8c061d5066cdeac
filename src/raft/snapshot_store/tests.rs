use super::*;
use openraft::{CommittedLeaderId, LogId, StoredMembership};

fn open(dir: &Path) -> Storage {
    Storage::open(&dir.join("member").join("rocksdb")).unwrap()
}

fn meta_at(index: u64) -> impl FnOnce(&Storage) -> Result<Meta, SnapError> {
    move |cp: &Storage| {
        // The meta comes from the checkpoint: here, the marker row the test wrote.
        let v = cp.get(Cf::Meta, b"applied-test")?.unwrap_or_default();
        assert_eq!(v, index.to_be_bytes());
        Ok(Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("1-{index}"),
        })
    }
}

fn fill(s: &Storage, index: u64, keys: usize) {
    let mut b = Batch::new();
    for i in 0..keys {
        b.put(Cf::Kv, format!("k{i:06}"), vec![index as u8; 1000]);
    }
    b.put(
        Cf::Meta,
        b"applied-test".to_vec(),
        index.to_be_bytes().to_vec(),
    );
    b.put(Cf::RaftLog, b"log".to_vec(), b"leader's log".to_vec());
    s.write(b, true).unwrap();
}

fn kv_rows(s: &Storage) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    s.scan(Cf::Kv, b"", None, |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok(true)
    })
    .unwrap();
    out
}

#[test]
fn build_keeps_the_newest_and_install_replaces_the_state_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let leader = open(&tmp.path().join("a"));
    let store = SnapStore::open(leader.clone()).unwrap();
    for index in [10, 20, 30] {
        fill(&leader, index, 2000);
        let (meta, data) = store.build(meta_at(index)).unwrap();
        assert_eq!(meta.last_log_id.unwrap().index, index);
        assert!(data.dir.join(META_FILE).exists());
    }
    assert_eq!(store.built().unwrap().len(), KEEP);
    let (meta, data) = store.latest().unwrap().unwrap();
    assert_eq!(meta.last_log_id.unwrap().index, 30);
    // Writes after the build do not reach the snapshot.
    fill(&leader, 40, 10);

    // Send: every file, the meta last.
    let files = snapshot_files(&data.dir).unwrap();
    assert_eq!(files.last().unwrap().0, META_FILE);
    let follower = open(&tmp.path().join("b"));
    let mut b = Batch::new();
    b.put(Cf::Kv, b"stale".to_vec(), b"x".to_vec());
    b.put(Cf::RaftLog, b"own".to_vec(), b"follower's log".to_vec());
    follower.write(b, true).unwrap();
    let fstore = SnapStore::open(follower.clone()).unwrap();
    let recv = fstore.receive_dir().unwrap();
    for (name, _) in &files {
        assert!(safe_file_name(name));
        std::fs::copy(data.dir.join(name), recv.join(name)).unwrap();
    }
    let own = fstore
        .install(&meta, &SnapData { dir: recv.clone() })
        .unwrap();
    assert!(
        !recv.exists(),
        "the received files are deleted once installed"
    );
    assert_eq!(fstore.latest().unwrap().unwrap().1, own);
    let rows = kv_rows(&follower);
    assert_eq!(rows.len(), 2000);
    assert!(rows.iter().all(|(_, v)| v[0] == 30));
    // The raft log column families are the follower's own.
    assert_eq!(follower.get(Cf::RaftLog, b"log").unwrap(), None);
    assert_eq!(
        follower.get(Cf::RaftLog, b"own").unwrap(),
        Some(b"follower's log".to_vec())
    );
    assert_eq!(fstore.installing().unwrap(), None);
}

#[test]
fn an_interrupted_install_is_finished_on_start() {
    let tmp = tempfile::tempdir().unwrap();
    let leader = open(&tmp.path().join("a"));
    let store = SnapStore::open(leader.clone()).unwrap();
    fill(&leader, 7, 500);
    let (_, data) = store.build(meta_at(7)).unwrap();

    let fdir = tmp.path().join("b");
    let follower = open(&fdir);
    let fstore = SnapStore::open(follower.clone()).unwrap();
    let recv = fstore.receive_dir().unwrap();
    for (name, _) in snapshot_files(&data.dir).unwrap() {
        std::fs::copy(data.dir.join(&name), recv.join(&name)).unwrap();
    }
    // A crash after the first batch: state cleared, record written, half the rows copied.
    let mut b = Batch::new();
    b.put(
        Cf::Meta,
        KEY_INSTALLING.to_vec(),
        SnapStore::record(Phase::Copying, &recv).unwrap(),
    );
    b.put(Cf::Kv, b"k000000".to_vec(), vec![7; 1000]);
    follower.write(b, true).unwrap();
    follower.quiesce().unwrap();
    drop(fstore);
    drop(follower);

    let follower = open(&fdir);
    let fstore = SnapStore::open(follower.clone()).unwrap();
    assert!(
        recv.exists(),
        "the directory of an unfinished install is kept"
    );
    // While copying, the state is incomplete whatever it says it applied: always finished.
    let meta = fstore.recover(1_000).unwrap().expect("installed");
    assert_eq!(meta.last_log_id.unwrap().index, 7);
    assert_eq!(kv_rows(&follower).len(), 500);
    assert_eq!(fstore.installing().unwrap(), None);
    assert!(!recv.exists());
    assert_eq!(fstore.latest().unwrap().unwrap().0, meta);
    assert!(fstore.recover(0).unwrap().is_none());

    // A staged snapshot (openraft may already have purged the log it covers) is installed when
    // it is newer than what was applied, and forgotten otherwise.
    for (applied, installs) in [(7, false), (6, true)] {
        let recv = fstore.receive_dir().unwrap();
        for (name, _) in snapshot_files(&data.dir).unwrap() {
            std::fs::copy(data.dir.join(&name), recv.join(&name)).unwrap();
        }
        fstore.stage(&recv).unwrap();
        assert_eq!(
            fstore.installing().unwrap(),
            Some((Phase::Staged, recv.clone()))
        );
        assert_eq!(fstore.recover(applied).unwrap().is_some(), installs);
        assert_eq!(fstore.installing().unwrap(), None);
        assert!(!recv.exists());
    }
}

#[test]
fn half_made_directories_are_removed_and_names_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path());
    let store = SnapStore::open(s.clone()).unwrap();
    for d in ["tmp-1", "recv-2", "snap-00000000000000000001-3"] {
        std::fs::create_dir_all(store.dir().join(d)).unwrap();
    }
    let store = SnapStore::open(s).unwrap();
    assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 0);
    assert!(store.latest().unwrap().is_none());
    for bad in ["", ".", "..", "a/b", "../x", "a\\b"] {
        assert!(!safe_file_name(bad), "{bad:?}");
    }
    assert!(safe_file_name("000012.sst"));
}
