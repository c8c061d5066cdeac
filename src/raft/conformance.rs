//! openraft's storage conformance suite against the RocksDB log store and state machine, with
//! appends synced on the sync thread (a member among others) and in place (a lone member).

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};

use std::sync::Arc;

use super::{LogStore, StateMachine, TypeConfig};
use crate::auth::AuthStore;
use crate::lease::{Lessor, SystemClock};
use crate::mvcc::Mvcc;
use crate::storage::Storage;

/// Builds stores whose appends are synced in place when the flag is set.
struct Builder(bool);

fn err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(err)?;
        let storage = Storage::open(&dir.path().join("rocksdb")).map_err(err)?;
        let mvcc = Mvcc::open(storage.clone()).map_err(err)?;
        let leases = Lessor::open(storage.clone(), Arc::new(SystemClock)).map_err(err)?;
        let log = LogStore::new(storage.clone()).map_err(err)?;
        log.set_in_place(self.0);
        let auth =
            AuthStore::open(storage.clone(), std::time::Duration::from_secs(300)).map_err(err)?;
        let alarms = crate::apply::Alarms::open(storage.clone()).map_err(err)?;
        let sm = StateMachine::open(
            storage,
            mvcc,
            Arc::new(leases),
            Arc::new(auth),
            Arc::new(alarms),
        )?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(Builder(false))
}

#[test]
fn openraft_storage_suite_syncing_in_place() -> Result<(), StorageError<u64>> {
    Suite::test_all(Builder(true))
}
