//! openraft's own storage test suite (`openraft::testing::log::Suite`) run against Shoal's log
//! store and state machine over the in-memory `Kv`: the contract openraft relies on (log
//! state after purge and truncation, vote persistence, membership recovery, snapshot install)
//! is checked by the library's authors' tests, not only ours. Snapshots go to a temporary
//! directory per store.

use std::sync::Arc;

use openraft::{StorageError, testing::log::StoreBuilder};
use shoal_docstore::{Kv, MemKv};
use shoal_repl::{
    log_store::LogStore, replicated_engine, snapshot::SnapshotStore, state_machine::StateMachine,
    types::TypeConfig,
};

struct MemBuilder;

/// Keeps a store's snapshot directory until the suite is done with the store.
type Guard = tempfile::TempDir;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for MemBuilder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), StorageError<TypeConfig>> {
        let io = |e: std::io::Error| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                e,
            )
        };
        let dir = tempfile::tempdir().map_err(io)?;
        let snapshots = Arc::new(SnapshotStore::open(dir.path()).map_err(io)?);
        let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
        let engine = replicated_engine(Arc::clone(&kv)).map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Read,
                std::io::Error::other(e.to_string()),
            )
        })?;
        let state_machine = StateMachine::new(Arc::new(engine), Arc::clone(&kv), 1, snapshots);
        Ok((dir, LogStore::new(kv), state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() -> Result<(), StorageError<TypeConfig>> {
    openraft::testing::log::Suite::test_all(MemBuilder).await
}
