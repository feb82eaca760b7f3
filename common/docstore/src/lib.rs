//! The document engine every shard member and config server runs: it executes MongoDB command
//! documents (`insert`, `find`, `getMore`, `aggregate`, `create`, `dbHash`, ...) against local
//! storage, as mongod's command layer does. The router forwards commands here almost unchanged
//! and each member's own wire port calls it for direct reads.
//!
//! Layers, bottom up: [`Kv`] (ordered key-value storage with atomic batches: [`MemKv`] for tests
//! and simulation, `RocksKv` in production), the key layout and catalog, secondary indexes kept
//! in the same batches as their documents, a write overlay that turns one command into one
//! synced batch, the planner and range scans every query goes through, and the command
//! handlers behind [`Engine::execute`].

#![deny(missing_docs)]

mod aggregate;
mod args;
mod atomic;
mod catalog;
mod cursor;
mod ddl;
mod engine;
mod error;
mod explain;
mod find_and_modify;
mod hash;
mod index;
mod index_ddl;
#[cfg(test)]
mod index_property;
mod keys;
mod kv;
mod matching;
mod migration;
mod plan;
mod read;
#[cfg(feature = "rocksdb")]
mod rocks;
mod scan;
mod shard_key;
pub mod sharding;
mod tracking;
mod txn;
mod validation;
mod write;

pub use atomic::{ATOMIC_OPS_MAX, AtomicOp};
pub use cursor::{CURSOR_IDLE_TIMEOUT, CURSORS_MAX};
pub use engine::{Engine, EngineStats, GENERIC_FIELDS};
pub use error::StoreError;
pub use index::{INDEX_KEYS_PER_DOCUMENT_MAX, INDEXES_PER_COLLECTION_MAX};
pub use index_ddl::INDEX_BUILD_BYTES_MAX;
pub use kv::{
    Kv, KvPair, KvRange, MemKv, PairVisitor, Space, WriteBatch, WriteOp, key_successor, prefix_end,
};
pub use matching::MATERIALIZE_BYTES_MAX;
pub use plan::PLAN_RANGES_MAX;
pub use read::{BATCH_BYTES_MAX, DISTINCT_BYTES_MAX, FIRST_BATCH_DOCS_DEFAULT};
#[cfg(feature = "rocksdb")]
pub use rocks::{CheckpointFile, RocksKv};
pub use write::{DOCUMENT_BYTES_MAX, WRITE_BATCH_STATEMENTS_MAX};
