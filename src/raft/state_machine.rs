//! The openraft state machine over [`crate::apply`] and [`crate::mvcc`].
//!
//! Invariants:
//! - One `apply` call is one RocksDB batch: the data, the last applied log id and any membership
//!   change commit together (etcd's 3.5.0-3.5.2 inconsistency came from splitting them).
//! - A snapshot is a consistent copy of the state-machine column families; its log id and
//!   membership are read from that same copy, never from memory.
//! - The IDs of removed members are recorded in the same batch as the membership that removed
//!   them, and are never forgotten: a removed member is told so whenever it calls (etcd never
//!   lets a removed ID back in).

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;

use super::TypeConfig;
use crate::apply::{apply_op, restore_leases, Alarms, Applied, Tables};
use crate::auth::AuthStore;
use crate::lease::Lessor;
use crate::mvcc::Mvcc;
use crate::storage::{Batch, Cf, Storage};
use crate::types::Member;

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_REMOVED: &[u8] = b"removed";

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
    snapshot: Option<(SnapshotMeta<u64, Member>, Vec<u8>)>,
}

/// The state machine; clones share state.
#[derive(Clone)]
pub struct StateMachine {
    storage: Storage,
    mvcc: Arc<Mvcc>,
    leases: Arc<Lessor>,
    auth: Arc<AuthStore>,
    alarms: Arc<Alarms>,
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

impl StateMachine {
    /// The key-value hash at `revision` (hash, compact revision, hash revision), as HashKV.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), String> {
        self.mvcc.hash_kv(revision).map_err(|e| e.to_string())
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
        let (applied, membership) = read_applied(&storage)?;
        let removed = read_removed(&storage)?;
        Ok(StateMachine {
            storage,
            mvcc,
            leases,
            auth,
            alarms,
            state: Arc::new(Mutex::new(State {
                applied,
                membership,
                removed,
                snapshot: None,
            })),
        })
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

    /// The log id of the last applied entry.
    pub fn applied(&self) -> Option<LogId<u64>> {
        self.state.lock().applied
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let rows = self.storage.export(&Cf::STATE_MACHINE).map_err(snap_err)?;
        let mut applied = None;
        let mut membership = Membership::default();
        for (cf, k, v) in &rows {
            if *cf == Cf::Meta && k.as_slice() == KEY_APPLIED {
                applied = bincode::deserialize::<Option<LogId<u64>>>(v).map_err(snap_err)?;
            }
            if *cf == Cf::Meta && k.as_slice() == KEY_MEMBERSHIP {
                membership = bincode::deserialize::<Membership>(v).map_err(snap_err)?;
            }
        }
        let tagged: Vec<(u8, &[u8], &[u8])> = rows
            .iter()
            .map(|(cf, k, v)| (cf.tag(), k.as_slice(), v.as_slice()))
            .collect();
        let data = bincode::serialize(&tagged).map_err(snap_err)?;
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, data.len()),
            None => format!("0-0-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        self.state.lock().snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
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
        for e in entries {
            last = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Applied::Nothing),
                EntryPayload::Normal(op) => {
                    let tables = Tables {
                        leases: &self.leases,
                        auth: &self.auth,
                        alarms: &self.alarms,
                    };
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
        if let Some(l) = last {
            w.batch_mut().put(
                Cf::Meta,
                KEY_APPLIED.to_vec(),
                bincode::serialize(&Some(l)).map_err(sm_write_err)?,
            );
        }
        w.commit().map_err(sm_write_err)?;
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let rows: Vec<(u8, Vec<u8>, Vec<u8>)> = bincode::deserialize(&data).map_err(snap_err)?;
        let mut b = Batch::new();
        for cf in Cf::STATE_MACHINE {
            self.storage.clear_into(cf, &mut b).map_err(sm_write_err)?;
        }
        for (tag, k, v) in rows {
            let cf = Cf::from_tag(tag).ok_or_else(|| {
                snap_err(std::io::Error::other(format!(
                    "unknown column family tag {tag}"
                )))
            })?;
            b.put(cf, k, v);
        }
        let storage = self.storage.clone();
        self.mvcc
            .replace(move || storage.write(b, true))
            .map_err(sm_write_err)?;
        restore_leases(&self.leases, &self.mvcc).map_err(sm_write_err)?;
        self.auth.load().map_err(sm_write_err)?;
        self.alarms.load().map_err(sm_write_err)?;
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_log_id = ?meta.last_log_id,
            bytes = data.len(),
            "installed snapshot from leader"
        );
        let removed = read_removed(&self.storage)?;
        let mut st = self.state.lock();
        st.removed = removed;
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let st = self.state.lock();
        Ok(st.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}
