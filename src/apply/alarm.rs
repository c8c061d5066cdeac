//! The alarm table: which member raised which alarm (NOSPACE, CORRUPT), as etcd keeps it.
//!
//! Invariants: the table changes only by applying an alarm command, so every member holds the same
//! alarms; each row is persisted in the `alarm` column family in the same batch as the applied
//! index; the in-memory copy is reloaded whenever the column family is replaced (start-up,
//! snapshot install).

use std::collections::BTreeSet;

use parking_lot::RwLock;

use crate::proto::etcdserverpb::{AlarmMember, AlarmType};
use crate::storage::{Batch, Cf, Storage, StorageError};

/// The active alarms, by (member ID, alarm type number).
#[derive(Debug)]
pub struct Alarms {
    storage: Storage,
    active: RwLock<BTreeSet<(u64, i32)>>,
}

/// An alarm's row key: the member ID (big-endian u64) then the alarm type (big-endian i32).
pub fn row_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = member.to_be_bytes().to_vec();
    k.extend_from_slice(&alarm.to_be_bytes());
    k
}

/// The member ID and alarm type of a row key; `None` when it is not 12 bytes.
pub fn parse_row_key(k: &[u8]) -> Option<(u64, i32)> {
    let member = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let alarm = i32::from_be_bytes(k.get(8..)?.try_into().ok()?);
    Some((member, alarm))
}

impl Alarms {
    /// The alarm table persisted in `storage`.
    pub fn open(storage: Storage) -> Result<Alarms, StorageError> {
        let a = Alarms {
            storage,
            active: RwLock::new(BTreeSet::new()),
        };
        a.load()?;
        Ok(a)
    }

    /// Reloads the table from storage.
    pub fn load(&self) -> Result<(), StorageError> {
        let mut set = BTreeSet::new();
        self.storage.scan(Cf::Alarm, &[], None, |k, _| {
            if k.len() == 12 {
                let mut m = [0u8; 8];
                m.copy_from_slice(&k[..8]);
                let mut t = [0u8; 4];
                t.copy_from_slice(&k[8..]);
                set.insert((u64::from_be_bytes(m), i32::from_be_bytes(t)));
            }
            Ok(true)
        })?;
        *self.active.write() = set;
        Ok(())
    }

    /// Every active alarm, ordered by member then type.
    pub fn list(&self) -> Vec<AlarmMember> {
        self.active
            .read()
            .iter()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Whether any member raised `alarm`.
    pub fn has(&self, alarm: AlarmType) -> bool {
        let t = alarm as i32;
        self.active.read().iter().any(|&(_, a)| a == t)
    }

    /// Raises `alarm` for `member` (writes into `batch`); returns the alarm if it was new.
    pub fn activate(&self, batch: &mut Batch, member: u64, alarm: i32) -> Option<AlarmMember> {
        if alarm == AlarmType::None as i32 {
            return None;
        }
        let mut set = self.active.write();
        if !set.insert((member, alarm)) {
            // Already raised: etcd answers with the alarm all the same.
            return Some(AlarmMember {
                member_id: member,
                alarm,
            });
        }
        batch.put(Cf::Alarm, row_key(member, alarm), Vec::new());
        Some(AlarmMember {
            member_id: member,
            alarm,
        })
    }

    /// Clears `alarm` for `member`; returns it if it was active.
    pub fn deactivate(&self, batch: &mut Batch, member: u64, alarm: i32) -> Option<AlarmMember> {
        let mut set = self.active.write();
        if !set.remove(&(member, alarm)) {
            return None;
        }
        batch.delete(Cf::Alarm, row_key(member, alarm));
        Some(AlarmMember {
            member_id: member,
            alarm,
        })
    }
}
