//! openraft's own storage test suite (`openraft::testing::log::Suite`) run against Shoal's log
//! store and state machine over the in-memory `Kv`: the contract openraft relies on (log
//! state after purge and truncation, vote persistence, membership recovery, snapshot install)
//! is checked by the library's authors' tests, not only ours.

use std::sync::Arc;

use openraft::{StorageError, testing::log::StoreBuilder};
use shoal_docstore::{Kv, MemKv};
use shoal_repl::{
    log_store::LogStore, replicated_engine, state_machine::StateMachine, types::TypeConfig,
};

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine> for MemBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
        let engine = replicated_engine(Arc::clone(&kv)).map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Read,
                std::io::Error::other(e.to_string()),
            )
        })?;
        let state_machine = StateMachine::new(Arc::new(engine), Arc::clone(&kv), 1);
        Ok(((), LogStore::new(kv), state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() -> Result<(), StorageError<TypeConfig>> {
    openraft::testing::log::Suite::test_all(MemBuilder).await
}
