//! The openraft state machine over [`crate::apply`] and [`crate::mvcc`].
//!
//! Invariants:
//! - One `apply` call is one RocksDB batch: the data, the last applied log id and any membership
//!   change commit together (etcd's 3.5.0-3.5.2 inconsistency came from splitting them).
//! - A snapshot is a RocksDB checkpoint ([`super::snapshot_store`]); its log id and membership
//!   are read from that same checkpoint, never from memory. Building, sending and installing one
//!   never holds more than a chunk or a batch of it in memory.
//! - The IDs of removed members are recorded in the same batch as the membership that removed
//!   them, and are never forgotten: a removed member is told so whenever it calls (etcd never
//!   lets a removed ID back in).

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;

use super::snapshot_store::{SnapData, SnapError, SnapStore};
use super::TypeConfig;
use crate::apply::{apply_op, restore_leases, Alarms, Applied, Tables};
use crate::auth::AuthStore;
use crate::lease::Lessor;
use crate::mvcc::Mvcc;
use crate::storage::{Batch, Cf, Storage};
use crate::types::Member;

/// The `meta` row of the last applied log id (bincode).
pub const KEY_APPLIED: &[u8] = b"applied";
/// The `meta` row of the membership (bincode of openraft's stored membership).
pub const KEY_MEMBERSHIP: &[u8] = b"membership";
/// The `meta` row of the IDs of removed members (bincode of a set).
pub const KEY_REMOVED: &[u8] = b"removed";

/// What a backup records of the cluster, decoded from the `meta` rows above.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterFacts {
    /// The index and term of the last applied log entry (0 when none).
    pub applied: (u64, u64),
    /// The members: ID, description, and whether it is a learner.
    pub members: Vec<(u64, Member, bool)>,
    /// The IDs of removed members.
    pub removed: Vec<u64>,
}

impl ClusterFacts {
    /// Decodes the stored rows of [`KEY_APPLIED`], [`KEY_MEMBERSHIP`] and [`KEY_REMOVED`].
    pub fn decode(
        applied: Option<&[u8]>,
        membership: Option<&[u8]>,
        removed: Option<&[u8]>,
    ) -> Result<ClusterFacts, bincode::Error> {
        let mut facts = ClusterFacts::default();
        if let Some(b) = applied {
            if let Some(l) = bincode::deserialize::<Option<LogId<u64>>>(b)? {
                facts.applied = (l.index, l.leader_id.term);
            }
        }
        if let Some(b) = membership {
            let m: Membership = bincode::deserialize(b)?;
            let voters: BTreeSet<u64> = m.membership().voter_ids().collect();
            facts.members = m
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.clone(), !voters.contains(id)))
                .collect();
        }
        if let Some(b) = removed {
            facts.removed = bincode::deserialize::<BTreeSet<u64>>(b)?
                .into_iter()
                .collect();
        }
        Ok(facts)
    }
}

/// The `meta` keys that belong to one cluster's raft history (applied log id, membership,
/// removed members): a snapshot restored into a new cluster leaves them out.
pub const CLUSTER_META_KEYS: [&[u8]; 3] = [KEY_APPLIED, KEY_MEMBERSHIP, KEY_REMOVED];

type SErr = StorageError<u64>;
type Membership = StoredMembership<u64, Member>;

fn sm_write_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn sm_read_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

#[derive(Default)]
struct State {
    applied: Option<LogId<u64>>,
    membership: Membership,
    removed: BTreeSet<u64>,
    snapshot: Option<(SnapshotMeta<u64, Member>, SnapData)>,
}

/// The state machine; clones share state.
#[derive(Clone)]
pub struct StateMachine {
    storage: Storage,
    mvcc: Arc<Mvcc>,
    leases: Arc<Lessor>,
    auth: Arc<AuthStore>,
    alarms: Arc<Alarms>,
    snaps: SnapStore,
    state: Arc<Mutex<State>>,
}

fn read_removed(storage: &Storage) -> Result<BTreeSet<u64>, SErr> {
    match storage.get(Cf::Meta, KEY_REMOVED).map_err(sm_read_err)? {
        Some(b) => bincode::deserialize::<BTreeSet<u64>>(&b).map_err(sm_read_err),
        None => Ok(BTreeSet::new()),
    }
}

/// The member IDs in a membership (voters and learners).
fn node_ids(m: &Membership) -> BTreeSet<u64> {
    m.membership().nodes().map(|(id, _)| *id).collect()
}

fn read_applied(storage: &Storage) -> Result<(Option<LogId<u64>>, Membership), SErr> {
    let applied = match storage.get(Cf::Meta, KEY_APPLIED).map_err(sm_read_err)? {
        Some(b) => bincode::deserialize::<Option<LogId<u64>>>(&b).map_err(sm_read_err)?,
        None => None,
    };
    let membership = match storage.get(Cf::Meta, KEY_MEMBERSHIP).map_err(sm_read_err)? {
        Some(b) => bincode::deserialize::<Membership>(&b).map_err(sm_read_err)?,
        None => Membership::default(),
    };
    Ok((applied, membership))
}

/// A snapshot's meta, read from its checkpoint.
fn meta_of_checkpoint(cp: &Storage) -> Result<SnapshotMeta<u64, Member>, SnapError> {
    let (applied, membership) = read_applied(cp).map_err(|e| SnapError::Codec(e.to_string()))?;
    let snapshot_id = match applied {
        Some(l) => format!("{}-{}", l.leader_id.term, l.index),
        None => "0-0".to_string(),
    };
    Ok(SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id,
    })
}

/// About the most bytes of ops one write batch of the apply path carries.
const APPLY_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Records `last` (when there is one) as the applied log id in `batch`.
fn put_applied(batch: &mut Batch, last: Option<LogId<u64>>) -> Result<(), SErr> {
    if let Some(l) = last {
        batch.put(
            Cf::Meta,
            KEY_APPLIED.to_vec(),
            bincode::serialize(&Some(l)).map_err(sm_write_err)?,
        );
    }
    Ok(())
}

impl StateMachine {
    /// The key-value hash at `revision` (hash, compact revision, hash revision), as HashKV,
    /// computed on the blocking pool.
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), String> {
        self.mvcc
            .blocking(move |m| m.hash_kv(revision))
            .await
            .map_err(|e| e.to_string())
    }

    /// Opens the state machine over the member's storage, store, lease table, auth store and
    /// alarm table.
    pub fn open(
        storage: Storage,
        mvcc: Arc<Mvcc>,
        leases: Arc<Lessor>,
        auth: Arc<AuthStore>,
        alarms: Arc<Alarms>,
    ) -> Result<StateMachine, SErr> {
        let snaps = SnapStore::open(storage.clone()).map_err(sm_read_err)?;
        if snaps.installing().map_err(sm_read_err)?.is_some() {
            return Err(sm_read_err(SnapError::Bad(
                "a snapshot install is unfinished: repair_at_start must run first".into(),
            )));
        }
        let (applied, membership) = read_applied(&storage)?;
        let removed = read_removed(&storage)?;
        let snapshot = snaps.latest().map_err(sm_read_err)?;
        Ok(StateMachine {
            storage,
            mvcc,
            leases,
            auth,
            alarms,
            snaps,
            state: Arc::new(Mutex::new(State {
                applied,
                membership,
                removed,
                snapshot,
            })),
        })
    }

    /// Repairs what a crash left between openraft and the state machine, before anything reads
    /// the state machine (the key index, leases and users are loaded from it after this):
    /// finishes an interrupted snapshot install (and purges the log it covers, as openraft
    /// would have), and makes sure a snapshot covers every purged log entry. Returns the
    /// snapshot installed, if one was.
    pub fn repair_at_start(storage: &Storage) -> Result<Option<String>, SnapError> {
        let snaps = SnapStore::open(storage.clone())?;
        let codec = |e: SErr| SnapError::Codec(e.to_string());
        let (applied, _) = read_applied(storage).map_err(codec)?;
        let installed = snaps.recover(applied.map(|l| l.index).unwrap_or(0))?;
        if let Some(upto) = installed.as_ref().and_then(|m| m.last_log_id) {
            if super::log_store::last_purged(storage).map_err(codec)? < Some(upto) {
                super::log_store::purge_through(storage, upto, true).map_err(codec)?;
            }
        }
        let purged = super::log_store::last_purged(storage).map_err(codec)?;
        let covered = snaps.latest()?.and_then(|(m, _)| m.last_log_id);
        if purged.is_some() && covered < purged {
            let (applied, _) = read_applied(storage).map_err(codec)?;
            if applied < purged {
                return Err(SnapError::Bad(format!(
                    "the raft log is purged through {purged:?} but the state machine applied \
                     only {applied:?} and no snapshot covers the gap; remove this member's data \
                     directory and let it rejoin"
                )));
            }
            let (meta, data) = snaps.build(meta_of_checkpoint)?;
            tracing::warn!(
                snapshot_id = %meta.snapshot_id,
                dir = %data.dir.display(),
                "built the snapshot a crash left missing"
            );
        }
        Ok(installed.map(|m| m.snapshot_id))
    }

    /// Whether `id` was a member once and has been removed from the cluster.
    pub fn was_removed(&self, id: u64) -> bool {
        self.state.lock().removed.contains(&id)
    }

    /// Whether the last applied membership lists `id` (as a voter or a learner).
    pub fn applied_membership_has(&self, id: u64) -> bool {
        self.state
            .lock()
            .membership
            .membership()
            .get_node(&id)
            .is_some()
    }

    /// The member's raft snapshots.
    pub fn snapshots(&self) -> &SnapStore {
        &self.snaps
    }

    /// The log id of the last applied entry.
    pub fn applied(&self) -> Option<LogId<u64>> {
        self.state.lock().applied
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let snaps = self.snaps.clone();
        let built = tokio::task::spawn_blocking(move || {
            let built = snaps.build(meta_of_checkpoint);
            crate::crash_point!("snapshot-build");
            built
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        let (meta, data) = built;
        tracing::info!(snapshot_id = %meta.snapshot_id, dir = %data.dir.display(), "built snapshot");
        self.state.lock().snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), SErr> {
        let st = self.state.lock();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut last = None;
        let mut new_membership = None;
        let (mut current, mut removed) = {
            let st = self.state.lock();
            (st.membership.clone(), st.removed.clone())
        };
        let removed_before = removed.len();
        let mut w = self.mvcc.writer();
        // Bytes of ops in the writer's batch so far: past APPLY_CHUNK_BYTES the batch is
        // committed (with the applied index so far) and a new one begun, so one apply call never
        // builds an unbounded batch. Only before any membership entry, whose bookkeeping is
        // written with the last batch.
        let mut chunk_bytes = 0usize;
        for e in entries {
            if chunk_bytes > APPLY_CHUNK_BYTES && new_membership.is_none() {
                put_applied(w.batch_mut(), last)?;
                w.commit().map_err(sm_write_err)?;
                w = self.mvcc.writer();
                chunk_bytes = 0;
            }
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Applied::Nothing),
                EntryPayload::Normal(op) => {
                    let tables = Tables {
                        leases: &self.leases,
                        auth: &self.auth,
                        alarms: &self.alarms,
                    };
                    chunk_bytes += op.size_hint();
                    out.push(apply_op(&mut w, tables, &op).map_err(sm_write_err)?)
                }
                EntryPayload::Membership(m) => {
                    let stored = Membership::new(Some(e.log_id), m);
                    let after = node_ids(&stored);
                    removed.extend(node_ids(&current).difference(&after));
                    current = stored.clone();
                    w.batch_mut().put(
                        Cf::Meta,
                        KEY_MEMBERSHIP.to_vec(),
                        bincode::serialize(&stored).map_err(sm_write_err)?,
                    );
                    new_membership = Some(stored);
                    out.push(Applied::Nothing);
                }
            }
        }
        if removed.len() != removed_before {
            w.batch_mut().put(
                Cf::Meta,
                KEY_REMOVED.to_vec(),
                bincode::serialize(&removed).map_err(sm_write_err)?,
            );
        }
        put_applied(w.batch_mut(), last)?;
        crate::crash_point!("apply-before-commit");
        if new_membership.is_some() {
            crate::crash_point!("apply-membership");
        }
        w.commit().map_err(sm_write_err)?;
        crate::crash_point!("apply-after-commit");
        let mut st = self.state.lock();
        if last.is_some() {
            st.applied = last;
        }
        if let Some(m) = new_membership {
            st.membership = m;
        }
        st.removed = removed;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapData>, SErr> {
        // The peer service receives into a directory of its own (`SnapStore::receive_dir`);
        // this one is only named, for openraft's own transports.
        Ok(Box::new(SnapData {
            dir: self.snaps.dir().join("recv-unused"),
        }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<SnapData>,
    ) -> Result<(), SErr> {
        let started = std::time::Instant::now();
        let snaps = self.snaps.clone();
        let mvcc = self.mvcc.clone();
        let m = meta.clone();
        let own = tokio::task::spawn_blocking(move || {
            let mut own = None;
            // The key index stays locked while the state machine is replaced, so no read sees
            // half of it; it is rebuilt from the installed state.
            mvcc.replace(|| {
                crate::crash_point!("snapshot-install");
                let data = snaps.install(&m, &snapshot).map_err(|e| {
                    crate::storage::StorageError::Corrupt {
                        cf: "snapshot",
                        detail: e.to_string(),
                    }
                })?;
                own = Some(data);
                Ok(())
            })
            .map(|()| own)
        })
        .await
        .map_err(sm_write_err)?
        .map_err(sm_write_err)?;
        restore_leases(&self.leases, &self.mvcc).map_err(sm_write_err)?;
        self.auth.load().map_err(sm_write_err)?;
        self.alarms.load().map_err(sm_write_err)?;
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_log_id = ?meta.last_log_id,
            took_ms = started.elapsed().as_millis() as u64,
            "installed snapshot from leader"
        );
        let removed = read_removed(&self.storage)?;
        let mut st = self.state.lock();
        st.removed = removed;
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.snapshot = own.map(|d| (meta.clone(), d));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let st = self.state.lock();
        Ok(st.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(data.clone()),
        }))
    }
}
