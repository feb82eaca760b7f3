//! The engine: dispatches one MongoDB command document to its handler and shapes the reply.
//!
//! Concurrency: reads run without locks against storage (each scan page is consistent, a scan
//! as a whole is not a snapshot, like a yielding MongoDB query). Writers are serialized by one
//! mutex so that existence checks (duplicate `_id`, implicit collection creation, upsert
//! matching) and the writes that depend on them are atomic with respect to each other.
//!
//! Atomicity: every write command stages all of its writes in one overlay and commits them as
//! one synced batch, so a command's effects (including documents inserted before an ordered
//! batch stopped at an error) become visible and durable together.

#[cfg(feature = "rocksdb")]
use std::path::Path;
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use bson::Document;
use shoal_common::{CommandError, ErrorCode, ids::validate_db_name};

use crate::{
    catalog,
    cursor::CursorTable,
    error::StoreError,
    kv::Kv,
    sharding::{ReceivedVersion, stale_unknown},
    tracking::{Trackers, TrackingKv},
    txn::Direct,
};

/// Counters for `serverStatus.opcounters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Documents inserted by `insert` (upserts count as update statements).
    pub inserts: u64,
    /// `find` commands.
    pub queries: u64,
    /// `update` statements.
    pub updates: u64,
    /// `delete` statements.
    pub deletes: u64,
    /// `getMore` commands.
    pub getmores: u64,
    /// Every other command.
    pub commands: u64,
    /// Cursors open now.
    pub cursors_open: u64,
}

#[derive(Default)]
struct Counters {
    inserts: AtomicU64,
    queries: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
    getmores: AtomicU64,
    commands: AtomicU64,
}

/// Executes MongoDB commands against local storage.
pub struct Engine {
    /// What commands read and write through.
    pub(crate) kv: Arc<dyn Kv>,
    /// The storage with migration tracking in front of it, where writes land: the same as `kv`
    /// unless a layer above captures the engine's writes and commits them itself
    /// ([`Engine::with_captured_writes`]).
    tracked: Arc<dyn Kv>,
    writer: Mutex<()>,
    pub(crate) cursors: Mutex<CursorTable>,
    counters: Counters,
    /// Migrations this member is the donor of (see `tracking.rs`).
    pub(crate) trackers: Arc<Trackers>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Fields every command may carry that the engine does not interpret (sessions, concerns,
/// routing versions). Listed for documentation: unknown fields are ignored anyway.
pub const GENERIC_FIELDS: &[&str] = &[
    "$db",
    "lsid",
    "txnNumber",
    "$clusterTime",
    "writeConcern",
    "readConcern",
    "$readPreference",
    "comment",
    "maxTimeMS",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "bypassDocumentValidation",
    "shardVersion",
    "databaseVersion",
    "autocommit",
    "startTransaction",
    "stmtIds",
    "stmtId",
];

impl Engine {
    /// Opens (or creates) a RocksDB-backed engine in `dir`.
    #[cfg(feature = "rocksdb")]
    pub fn open(dir: &Path) -> Result<Engine, StoreError> {
        let kv = crate::rocks::RocksKv::open(dir)?;
        Engine::with_kv(Arc::new(kv))
    }

    /// An engine over any storage. Reads the catalog once so that a corrupt catalog is found at
    /// startup rather than by the first client.
    pub fn with_kv(kv: Arc<dyn Kv>) -> Result<Engine, StoreError> {
        Engine::with_captured_writes(kv, |tracked| tracked)
    }

    /// An engine whose writes a layer above captures and commits itself (replication writes an
    /// applied entry's changes in one batch with its bookkeeping). `capture` builds that layer
    /// over the tracked storage; the layer must commit what it captured through
    /// [`Engine::tracked_storage`], so that a migration's change tracking notes each write in
    /// the same step as it lands in storage. Noting a write when the engine makes it, and letting
    /// it land later, opens a window in which the catch-up reads the document before it exists
    /// and sends it as deleted (see `tracking.rs`).
    pub fn with_captured_writes(
        storage: Arc<dyn Kv>,
        capture: impl FnOnce(Arc<dyn Kv>) -> Arc<dyn Kv>,
    ) -> Result<Engine, StoreError> {
        let collections = catalog::list_all(&Direct(storage.as_ref()))?;
        tracing::info!(collections = collections.len(), "document engine opened");
        let trackers = Arc::new(Trackers::default());
        let tracked: Arc<dyn Kv> = Arc::new(TrackingKv::new(storage, Arc::clone(&trackers)));
        let kv = capture(Arc::clone(&tracked));
        Ok(Engine {
            trackers,
            kv,
            tracked,
            writer: Mutex::new(()),
            cursors: Mutex::new(CursorTable::default()),
            counters: Counters::default(),
        })
    }

    /// The storage underneath (for snapshots and tests).
    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    /// The storage below any capturing layer, with migration tracking in front of it: where a
    /// layer built by [`Engine::with_captured_writes`] commits the writes it captured.
    pub fn tracked_storage(&self) -> &Arc<dyn Kv> {
        &self.tracked
    }

    /// Runs one command (first key = command name) against database `db` and returns the full
    /// reply: `{ok: 1.0, ...}` or the command error's document. Synchronous: async callers wrap
    /// it in `spawn_blocking`.
    pub fn execute(&self, db: &str, command: &Document) -> Document {
        let name = command.keys().next().map_or("", String::as_str);
        match self.dispatch(db, name, command) {
            Ok(mut reply) => {
                reply.insert("ok", 1.0);
                reply
            }
            Err(err) => {
                if matches!(
                    err.code,
                    ErrorCode::INTERNAL_ERROR | ErrorCode::UNKNOWN_ERROR
                ) {
                    tracing::error!(command = name, db, code = err.code.0, errmsg = %err.errmsg, "command failed");
                }
                err.to_document()
            }
        }
    }

    /// Operation counters.
    pub fn stats(&self) -> EngineStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EngineStats {
            inserts: load(&self.counters.inserts),
            queries: load(&self.counters.queries),
            updates: load(&self.counters.updates),
            deletes: load(&self.counters.deletes),
            getmores: load(&self.counters.getmores),
            commands: load(&self.counters.commands),
            cursors_open: self.lock_cursors().len() as u64,
        }
    }

    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_cursors(&self) -> MutexGuard<'_, CursorTable> {
        self.cursors.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count_inserts(&self, n: u64) {
        self.counters.inserts.fetch_add(n, Ordering::Relaxed);
    }

    fn bump(&self, counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    fn dispatch(&self, db: &str, name: &str, command: &Document) -> Result<Document, CommandError> {
        validate_db_name(db)?;
        if let Some(received) = command.get("shardVersion") {
            self.check_shard_version(db, name, command, received)?;
        }
        match name {
            "insert" => self.insert(db, command),
            "update" => {
                self.bump(&self.counters.updates, statement_count(command, "updates"));
                self.update(db, command)
            }
            "delete" => {
                self.bump(&self.counters.deletes, statement_count(command, "deletes"));
                self.delete(db, command)
            }
            "find" => {
                self.bump(&self.counters.queries, 1);
                self.find(db, command)
            }
            "getMore" => {
                self.bump(&self.counters.getmores, 1);
                self.get_more(db, command)
            }
            _ => {
                self.bump(&self.counters.commands, 1);
                self.dispatch_other(db, name, command)
            }
        }
    }

    fn dispatch_other(
        &self,
        db: &str,
        name: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        match name {
            "killCursors" => self.kill_cursors(db, command),
            "count" => self.count(db, command),
            "distinct" => self.distinct(db, command),
            "aggregate" => self.aggregate(db, command),
            "findAndModify" | "findandmodify" => self.find_and_modify(db, name, command),
            "create" => self.create(db, command),
            "drop" => self.drop_collection(db, command),
            "dropDatabase" => self.drop_database(db),
            "listCollections" => self.list_collections(db, command),
            "listDatabases" => self.list_databases(db, command),
            "listIndexes" => self.list_indexes(db, command),
            "createIndexes" => self.create_indexes(db, command),
            "dropIndexes" | "deleteIndexes" => self.drop_indexes(db, name, command),
            "collMod" => self.coll_mod(db, command),
            "renameCollection" => self.rename_collection(db, command),
            "explain" => self.explain(db, command),
            "collStats" => self.coll_stats(db, command),
            "dataSize" => self.data_size(command),
            "dbHash" | "dbhash" => self.db_hash(db, command),
            "ping" => Ok(Document::new()),
            "_shoalCountRange" => self.count_range(command),
            "_shoalApplyAtomic" => self.apply_atomic_command(command),
            "_shoalSplitPoint" => self.split_point(command),
            "_shoalRangeSizes" => self.range_sizes(command),
            "_shoalSetFiltering" => self.set_filtering(command),
            "_shoalMigrateRead" => self.migrate_read(command),
            "_shoalMigrateApply" => self.migrate_apply(command),
            "_shoalDeleteRange" => self.delete_range(command),
            "_shoalMigrateStart" => self.migrate_start(command),
            "_shoalMigrateMods" => self.migrate_mods(command),
            "_shoalMigrateEnd" => self.migrate_end(command),
            "_shoalCursorsOpen" => self.cursors_open(command),
            _ => Err(CommandError::new(
                ErrorCode::COMMAND_NOT_FOUND,
                format!("no such command: '{name}'"),
            )),
        }
    }
}

impl Engine {
    /// Refuses (StaleConfig) a router request routed with another version of this shard's
    /// ownership of the collection than the one it holds now; see `sharding.rs`.
    fn check_shard_version(
        &self,
        db: &str,
        name: &str,
        command: &Document,
        received: &bson::Bson,
    ) -> Result<(), CommandError> {
        let received = ReceivedVersion::parse(received)?;
        let target = match (name, command.get(name)) {
            ("explain", Some(bson::Bson::Document(inner))) => inner.values().next(),
            (_, value) => value,
        };
        let Some(bson::Bson::String(coll)) = target else {
            return Err(CommandError::bad_value(format!(
                "shardVersion sent with '{name}', which names no collection"
            )));
        };
        let ns = format!("{db}.{coll}");
        let entry = catalog::lookup(&Direct(self.kv.as_ref()), &ns)?;
        match entry.as_ref().and_then(|entry| entry.sharding.as_ref()) {
            Some(state) => state.check_version(&ns, &received),
            None => Err(stale_unknown(&ns, &received)),
        }
    }
}

fn statement_count(command: &Document, field: &str) -> u64 {
    command
        .get_array(field)
        .map_or(0, |items| items.len() as u64)
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;
    use crate::kv::{MemKv, Space, WriteBatch};

    #[test]
    fn corrupt_documents_fail_the_request_not_the_process() {
        let kv = Arc::new(MemKv::new());
        let engine = Engine::with_kv(kv.clone()).unwrap();
        let reply = engine.execute(
            "db",
            &doc! {"insert": "c", "documents": [{"_id": 1}, {"_id": 2}]},
        );
        assert_eq!(reply.get_i32("n").unwrap(), 2);
        let mut batch = WriteBatch::new();
        for (key, _) in kv.scan(Space::Docs, b"d", b"e", 10).unwrap() {
            batch.put(Space::Docs, key, b"not bson".to_vec());
        }
        kv.write(batch, true).unwrap();
        let commands = [
            doc! {"find": "c"},
            doc! {"count": "c", "query": {"a": 1}},
            doc! {"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 1}}}]},
            doc! {"dbHash": 1},
        ];
        for command in commands {
            let reply = engine.execute("db", &command);
            if command.contains_key("dbHash") {
                // dbHash hashes raw bytes and never decodes them.
                assert_eq!(reply.get_f64("ok").unwrap(), 1.0);
                continue;
            }
            assert_eq!(reply.get_i32("code").unwrap(), 1, "{command}: {reply}");
        }
    }
}
