//! Chunk migration with its data, driven by the config server's primary, and the shards'
//! ownership metadata ("filtering") that keeps every read and write correct meanwhile.
//!
//! A migration of `[min, max)` from donor D to recipient R:
//! 1. records itself in `config.migrations` (so a new config primary can resolve it);
//! 2. prepares R: the collection and D's indexes, any leftover copy of the range deleted;
//! 3. starts change tracking on D's primary, then copies the range page by page (`clone`);
//! 4. catches up: re-sends the documents changed on D since, until few remain;
//! 5. critical section: marks the migration doc `critical`, pushes D's ownership with the
//!    range held (writes to it get StaleConfig and are retried by routers), and drains the last
//!    changes;
//! 6. commits: the chunk's new owner and version, a version bump of one of D's chunks (so D's
//!    shard version changes too), the removal of the migration doc and a range deletion task
//!    for D, in one atomic metadata write;
//! 7. pushes the new ownership to R, then to D (which leaves the critical section);
//! 8. later, the range deleter removes D's copy once no cursor that began before the commit is
//!    open there.
//!
//! Any failure before the commit aborts: the migration doc loses `critical` first (so no later
//! push re-enters it), D's and R's ownership are pushed again from the unchanged chunk map, and
//! R's partial copy is queued for deletion. A new config primary does the same for a migration
//! doc it finds (`recover_migrations`); a migration whose commit landed leaves no doc, and the
//! new primary pushes every collection's ownership to every shard when it starts.
//!
//! The steps are failpoints named `moveChunk.<step>`; armed as `name:pause=MILLIS` they pause
//! so a test can kill a donor or recipient primary exactly there.

use std::{sync::Arc, time::Duration};

use bson::{Bson, Document, doc, oid::ObjectId};
use shoal_common::{
    CommandError, ErrorCode, Namespace, ShardId, bsonorder::compare_key_values,
    chunks::ShardKeyPattern, failpoint,
};
use shoal_docstore::AtomicOp;
use shoal_member::MemberCore;

use crate::{
    catalog::{self, ShardedCollection, coll},
    server::{ConfigServer, shard_call},
    store,
};

/// Pages of documents one clone copies at most (each page is at most 2 MiB or 50,000 documents
/// examined on the donor): a guard against a runaway loop, far above any real chunk.
pub const CLONE_PAGES_MAX: usize = 1_000_000;
/// Catch-up rounds before the critical section is entered anyway.
pub const CATCH_UP_ROUNDS_MAX: usize = 50;
/// A catch-up round that re-sent fewer documents than this ends the catch-up.
pub const CATCH_UP_SMALL_DOCS: usize = 200;
/// Rounds draining the last changes inside the critical section before the migration aborts.
pub const CRITICAL_ROUNDS_MAX: usize = 100;
/// How often the primary looks for range deletions to run.
pub const RANGE_DELETION_INTERVAL: Duration = Duration::from_secs(1);
/// How long a range deletion waits for cursors older than it (MongoDB's
/// `orphanCleanupDelaySecs` is 900 s) before deleting anyway.
pub const RANGE_DELETION_WAIT_MAX: Duration = Duration::from_secs(900);
/// Delete pages one range-deletion task runs before yielding to migrations.
pub const DELETE_PAGES_PER_PASS: usize = 200;

/// `config.migrations`: the migration in progress, if any.
pub const MIGRATIONS: &str = "migrations";
/// `config.changelog`: MongoDB's record of metadata changes (migrations here).
pub const CHANGELOG: &str = "changelog";
/// Changelog entries kept.
pub const CHANGELOG_MAX: usize = 200;
/// `config.rangeDeletions`: copies of ranges a shard no longer (or never) owns, to delete.
pub const RANGE_DELETIONS: &str = "rangeDeletions";

/// What a migration moved.
#[derive(Clone, Copy, Debug, Default)]
pub struct MigrationReport {
    /// Documents copied in the clone phase.
    pub docs: i64,
    /// Their bytes.
    pub bytes: i64,
    /// Documents re-sent by catch-up and the critical section.
    pub mods: i64,
    /// Milliseconds from start to the new ownership being pushed.
    pub millis: i64,
}

/// One migration, as recorded in `config.migrations`.
#[derive(Clone, Debug)]
struct Migration {
    ns: Namespace,
    key: ShardKeyPattern,
    min: Document,
    max: Document,
    from: ShardId,
    to: ShardId,
    /// The collection incarnation: shards act on the range only while they hold this epoch,
    /// so a task left from a dropped collection never touches its successor.
    epoch: ObjectId,
}

impl Migration {
    fn id(&self) -> String {
        format!("{}-{}", self.ns, self.min)
    }

    fn to_document(&self, critical: bool) -> Document {
        doc! {
            "_id": self.id(), "ns": self.ns.to_string(), "key": self.key.to_document(),
            "min": self.min.clone(), "max": self.max.clone(),
            "from": self.from.as_str(), "to": self.to.as_str(),
            "critical": critical, "started": bson::DateTime::now(), "epoch": self.epoch,
        }
    }

    fn from_document(record: &Document) -> Result<Migration, CommandError> {
        let bad = || CommandError::internal(format!("malformed migration record {record}"));
        Ok(Migration {
            ns: Namespace::parse(record.get_str("ns").map_err(|_| bad())?)?,
            key: ShardKeyPattern::parse(record.get_document("key").map_err(|_| bad())?)?,
            min: record.get_document("min").map_err(|_| bad())?.clone(),
            max: record.get_document("max").map_err(|_| bad())?.clone(),
            from: ShardId::new(record.get_str("from").map_err(|_| bad())?)?,
            to: ShardId::new(record.get_str("to").map_err(|_| bad())?)?,
            epoch: record.get_object_id("epoch").map_err(|_| bad())?,
        })
    }

    /// The shard-side arguments naming the range: `key`, `min`, `max`.
    fn range_args(&self, mut command: Document) -> Document {
        command.insert("key", self.key.to_document());
        command.insert("min", self.min.clone());
        command.insert("max", self.max.clone());
        command.insert("epoch", self.epoch);
        command.insert("$db", "admin");
        command
    }

    fn range_deletion(&self, shard: &ShardId) -> Document {
        doc! {
            "_id": ObjectId::new(), "ns": self.ns.to_string(), "shard": shard.as_str(),
            "key": self.key.to_document(), "min": self.min.clone(), "max": self.max.clone(),
            "created": bson::DateTime::now(), "epoch": self.epoch,
        }
    }
}

/// Passes the named step: aborts or pauses there when the failpoint is armed.
async fn step(name: &str) {
    failpoint::hit(name);
    if let Some(millis) = failpoint::pause_millis(name) {
        eprintln!("failpoint {name} paused for {millis} ms");
        tracing::warn!(failpoint = name, millis, "failpoint pausing");
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
}

fn put(coll_name: &str, doc: Document) -> AtomicOp {
    AtomicOp::Put {
        coll: coll_name.to_owned(),
        doc,
    }
}

async fn call_ok(
    core: &Arc<MemberCore>,
    host: &str,
    request: Document,
) -> Result<Document, CommandError> {
    let reply = shard_call(core, host, request).await?;
    match CommandError::from_reply(&reply) {
        Some(error) => Err(error),
        None => Ok(reply),
    }
}

/// The ownership state of `shard` for a collection, as `_shoalSetFiltering` takes it: the
/// merged ranges of its chunks, the highest major version among them, and the range held by a
/// migration's critical section.
pub fn filtering_state(
    collection: &ShardedCollection,
    shard: &ShardId,
    critical: Option<(&Document, &Document)>,
) -> Document {
    let mut ranges: Vec<Document> = Vec::new();
    let mut major = 0u32;
    for chunk in collection.map.chunks.iter().filter(|c| &c.shard == shard) {
        major = major.max(chunk.version.major);
        let extends = ranges
            .last()
            .and_then(|last| last.get_document("max").ok())
            .is_some_and(|max| compare_key_values(max, &chunk.min).is_eq());
        if extends {
            if let Some(last) = ranges.last_mut() {
                last.insert("max", chunk.max.clone());
            }
        } else {
            ranges.push(doc! {"min": chunk.min.clone(), "max": chunk.max.clone()});
        }
    }
    let mut state = doc! {
        "epoch": collection.epoch.0, "major": i64::from(major),
        "collectionMajor": i64::from(collection.map.collection_version().map_or(0, |v| v.major)),
        "key": collection.map.key.to_document(), "ranges": ranges,
    };
    if let Some((min, max)) = critical {
        state.insert("critical", doc! {"min": min.clone(), "max": max.clone()});
    }
    state
}

impl ConfigServer {
    /// `moveChunk: ns, find | bounds, to` and `moveRange: ns, min, max?, toShard`.
    pub(crate) async fn move_chunk_command(
        &self,
        core: &Arc<MemberCore>,
        name: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = Namespace::parse(crate::server::string_field(command, name)?)?;
        let (min, max, to) = {
            let _guard = self.metadata_lock.lock().await;
            let collection = self.load_collection(core, &ns).await?;
            if name == "moveRange" {
                self.range_for_move_range(core, &ns, collection, command)
                    .await?
            } else {
                let key = crate::server::chunk_key_from_command(&collection.map, command)?;
                let chunk = collection.map.chunk_for_key(&key);
                let to = ShardId::new(crate::server::string_field(command, "to")?)?;
                (chunk.min.clone(), chunk.max.clone(), to)
            }
        };
        let report = self.migrate_range(core, &ns, &min, &max, &to).await?;
        Ok(doc! {
            "millis": report.millis, "docs": report.docs, "bytes": report.bytes, "ok": 1.0,
        })
    }

    /// The chunk `moveRange` moves: `[min, max)` (max defaults to the end of the chunk holding
    /// min), split out of its chunk first when it is smaller.
    async fn range_for_move_range(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        collection: ShardedCollection,
        command: &Document,
    ) -> Result<(Document, Document, ShardId), CommandError> {
        let to = ShardId::new(crate::server::string_field(command, "toShard")?)?;
        let min = command
            .get_document("min")
            .map_err(|_| CommandError::bad_value("moveRange needs 'min'"))?
            .clone();
        collection.map.key.validate_key_shape(&min)?;
        let chunk = collection.map.chunk_for_key(&min).clone();
        let max = match command.get_document("max") {
            Ok(max) => max.clone(),
            Err(_) => chunk.max.clone(),
        };
        collection.map.key.validate_key_shape(&max)?;
        if compare_key_values(&max, &chunk.max).is_gt() || compare_key_values(&min, &max).is_ge() {
            return Err(CommandError::bad_value(format!(
                "moveRange [{min}, {max}) must lie within one chunk ([{}, {}))",
                chunk.min, chunk.max
            )));
        }
        let mut collection = collection;
        if compare_key_values(&min, &chunk.min).is_gt() {
            self.split_at(core, ns, collection, &min).await?;
            collection = self.load_collection(core, ns).await?;
        }
        if compare_key_values(&max, &chunk.max).is_lt() {
            self.split_at(core, ns, collection, &max).await?;
        }
        Ok((min, max, to))
    }

    /// Moves the chunk `[min, max)` of `ns` with its documents to `to`. At most one migration
    /// runs at a time; a move to the current owner does nothing.
    pub(crate) async fn migrate_range(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        min: &Document,
        max: &Document,
        to: &ShardId,
    ) -> Result<MigrationReport, CommandError> {
        let _one_at_a_time = self.migration_lock.lock().await;
        let started = std::time::Instant::now();
        let migration = {
            let _guard = self.metadata_lock.lock().await;
            let collection = self.load_collection(core, ns).await?;
            let index = collection.map.chunk_index_for_key(min);
            let chunk = &collection.map.chunks[index];
            if chunk.min != *min || chunk.max != *max {
                return Err(CommandError::bad_value(format!(
                    "[{min}, {max}) is not a chunk of {ns} (the chunk there is [{}, {}))",
                    chunk.min, chunk.max
                )));
            }
            if &chunk.shard == to {
                // Perhaps a retry after a crash right after the commit: make sure the shards
                // know, rather than wait for a new primary's pass.
                drop(_guard);
                let shards = self.all_shards(core).await?;
                self.sync_filtering(core, ns, &shards).await?;
                return Ok(MigrationReport::default());
            }
            self.shard_host(core, to).await?;
            let migration = Migration {
                ns: ns.clone(),
                key: collection.map.key.clone(),
                min: min.clone(),
                max: max.clone(),
                from: chunk.shard.clone(),
                to: to.clone(),
                epoch: collection.epoch.0,
            };
            store::apply(core, vec![put(MIGRATIONS, migration.to_document(false))]).await?;
            migration
        };
        step("moveChunk.afterStart").await;
        let mut report = match self.run_migration(core, &migration).await {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(ns = %ns, min = %min, from = %migration.from, to = %to, %error, "migration failed; resolving");
                if let Err(resolve) = self.resolve_migration(core, &migration).await {
                    tracing::warn!(error = %resolve, "migration not resolved yet; a later pass retries");
                }
                self.log_migration(
                    core,
                    "moveChunk.error",
                    &migration,
                    &MigrationReport::default(),
                )
                .await;
                return Err(error);
            }
        };
        report.millis = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        tracing::info!(ns = %ns, min = %min, from = %migration.from, to = %to, docs = report.docs, bytes = report.bytes, mods = report.mods, millis = report.millis, "chunk migrated");
        self.log_migration(core, "moveChunk.commit", &migration, &report)
            .await;
        Ok(report)
    }

    async fn run_migration(
        &self,
        core: &Arc<MemberCore>,
        migration: &Migration,
    ) -> Result<MigrationReport, CommandError> {
        let from_host = self.shard_host(core, &migration.from).await?;
        let to_host = self.shard_host(core, &migration.to).await?;
        let both = [migration.from.clone(), migration.to.clone()];
        self.sync_filtering(core, &migration.ns, &both).await?;
        self.prepare_recipient(core, migration, &from_host, &to_host)
            .await?;
        let start = migration.range_args(doc! {"_shoalMigrateStart": migration.ns.to_string()});
        call_ok(core, &from_host, start).await?;
        let mut report = self
            .clone_range(core, migration, &from_host, &to_host)
            .await?;
        step("moveChunk.afterClone").await;
        for _ in 0..CATCH_UP_ROUNDS_MAX {
            let (sent, _) = self
                .transfer_mods(core, migration, &from_host, &to_host)
                .await?;
            report.mods += sent as i64;
            if sent < CATCH_UP_SMALL_DOCS {
                break;
            }
        }
        step("moveChunk.afterCatchUp").await;
        store::apply(core, vec![put(MIGRATIONS, migration.to_document(true))]).await?;
        self.sync_filtering(core, &migration.ns, std::slice::from_ref(&migration.from))
            .await?;
        step("moveChunk.inCriticalSection").await;
        let mut drained = false;
        for _ in 0..CRITICAL_ROUNDS_MAX {
            let (sent, remaining) = self
                .transfer_mods(core, migration, &from_host, &to_host)
                .await?;
            report.mods += sent as i64;
            if sent == 0 && remaining == 0 {
                drained = true;
                break;
            }
        }
        if !drained {
            return Err(CommandError::new(
                ErrorCode::OPERATION_FAILED,
                "the donor kept changing inside the critical section",
            ));
        }
        self.commit_migration(core, migration).await?;
        step("moveChunk.afterCommit").await;
        self.sync_filtering(core, &migration.ns, std::slice::from_ref(&migration.to))
            .await?;
        step("moveChunk.afterRecipientRefresh").await;
        self.sync_filtering(core, &migration.ns, std::slice::from_ref(&migration.from))
            .await?;
        self.end_tracking(core, migration).await;
        Ok(report)
    }

    /// Creates the collection and the donor's indexes on the recipient, and deletes whatever
    /// copy of the range an earlier, aborted migration left there.
    async fn prepare_recipient(
        &self,
        core: &Arc<MemberCore>,
        migration: &Migration,
        from_host: &str,
        to_host: &str,
    ) -> Result<(), CommandError> {
        let ns = &migration.ns;
        let list = doc! {"listIndexes": ns.coll.clone(), "$db": ns.db.clone()};
        let reply = call_ok(core, from_host, list).await?;
        let indexes: Vec<Bson> = reply
            .get_document("cursor")
            .and_then(|cursor| cursor.get_array("firstBatch"))
            .map(|batch| {
                batch
                    .iter()
                    .filter(|index| {
                        index
                            .as_document()
                            .is_some_and(|index| index.get_str("name") != Ok("_id_"))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let create = doc! {"create": ns.coll.clone(), "$db": ns.db.clone()};
        let reply = shard_call(core, to_host, create).await?;
        match CommandError::from_reply(&reply) {
            Some(error) if error.code != ErrorCode::NAMESPACE_EXISTS => return Err(error),
            _ => {}
        }
        if !indexes.is_empty() {
            let create =
                doc! {"createIndexes": ns.coll.clone(), "indexes": indexes, "$db": ns.db.clone()};
            call_ok(core, to_host, create).await?;
        }
        self.delete_range_now(core, to_host, migration).await?;
        let pending = store::find_all(
            core,
            RANGE_DELETIONS,
            doc! {"ns": ns.to_string(), "shard": migration.to.as_str()},
        )
        .await?;
        let mut ops = Vec::new();
        for task in pending {
            let covered = task
                .get_document("min")
                .is_ok_and(|min| compare_key_values(min, &migration.min).is_ge())
                && task
                    .get_document("max")
                    .is_ok_and(|max| compare_key_values(max, &migration.max).is_le());
            if covered && let Some(id) = task.get("_id") {
                ops.push(AtomicOp::Delete {
                    coll: RANGE_DELETIONS.into(),
                    id: id.clone(),
                });
            }
        }
        if !ops.is_empty() {
            store::apply(core, ops).await?;
        }
        Ok(())
    }

    async fn delete_range_now(
        &self,
        core: &Arc<MemberCore>,
        host: &str,
        migration: &Migration,
    ) -> Result<bool, CommandError> {
        let mut after = Bson::Null;
        for _ in 0..DELETE_PAGES_PER_PASS {
            let mut request =
                migration.range_args(doc! {"_shoalDeleteRange": migration.ns.to_string()});
            request.insert("after", after);
            let reply = call_ok(core, host, request).await?;
            after = reply.get("next").cloned().unwrap_or(Bson::Null);
            if after == Bson::Null {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Copies the range page by page; the next page is read from the donor while the last
    /// one is applied on the recipient.
    async fn clone_range(
        &self,
        core: &Arc<MemberCore>,
        migration: &Migration,
        from_host: &str,
        to_host: &str,
    ) -> Result<MigrationReport, CommandError> {
        let read = |after: Bson| {
            let mut read =
                migration.range_args(doc! {"_shoalMigrateRead": migration.ns.to_string()});
            read.insert("after", after);
            call_ok(core, from_host, read)
        };
        let apply = |docs: Vec<Bson>| async move {
            if docs.is_empty() {
                return Ok(Document::new());
            }
            let apply = migration.range_args(doc! {
                "_shoalMigrateApply": migration.ns.to_string(), "docs": docs, "deletes": [],
            });
            call_ok(core, to_host, apply).await
        };
        let mut report = MigrationReport::default();
        let mut page = read(Bson::Null).await?;
        for _ in 0..CLONE_PAGES_MAX {
            let docs = page.get_array("docs").cloned().unwrap_or_default();
            report.docs += docs.len() as i64;
            report.bytes += page.get_i64("bytes").unwrap_or(0);
            let after = page.get("next").cloned().unwrap_or(Bson::Null);
            if after == Bson::Null {
                apply(docs).await?;
                return Ok(report);
            }
            let (applied, next) = tokio::join!(apply(docs), read(after));
            applied?;
            page = next?;
        }
        Err(CommandError::new(
            ErrorCode::OPERATION_FAILED,
            format!("clone of {} exceeded {CLONE_PAGES_MAX} pages", migration.ns),
        ))
    }

    /// Sends the documents changed on the donor since the last call to the recipient; returns
    /// how many it sent and how many changes remain on the donor.
    async fn transfer_mods(
        &self,
        core: &Arc<MemberCore>,
        migration: &Migration,
        from_host: &str,
        to_host: &str,
    ) -> Result<(usize, i64), CommandError> {
        let request = doc! {"_shoalMigrateMods": migration.ns.to_string(), "$db": "admin"};
        let mods = call_ok(core, from_host, request).await?;
        let docs = mods.get_array("docs").cloned().unwrap_or_default();
        let deletes = mods.get_array("deletes").cloned().unwrap_or_default();
        let remaining = mods.get_i64("remaining").unwrap_or(0);
        let sent = docs.len() + deletes.len();
        if sent > 0 {
            let apply = migration.range_args(doc! {
                "_shoalMigrateApply": migration.ns.to_string(), "docs": docs, "deletes": deletes,
            });
            call_ok(core, to_host, apply).await?;
        }
        Ok((sent, remaining))
    }

    /// The commit: new owner and versions, the migration doc removed and the donor's range
    /// deletion queued, atomically.
    async fn commit_migration(
        &self,
        core: &Arc<MemberCore>,
        migration: &Migration,
    ) -> Result<(), CommandError> {
        let _guard = self.metadata_lock.lock().await;
        let mut collection = self.load_collection(core, &migration.ns).await?;
        let index = collection.map.chunk_index_for_key(&migration.min);
        let chunk = &collection.map.chunks[index];
        if chunk.min != migration.min
            || chunk.max != migration.max
            || chunk.shard != migration.from
            || collection.epoch.0 != migration.epoch
        {
            return Err(CommandError::new(
                ErrorCode::CONFLICTING_OPERATION_IN_PROGRESS,
                "the chunk changed during its migration",
            ));
        }
        let moved = collection.map.move_chunk(&migration.min, &migration.to)?;
        let mut ops = Vec::new();
        // The moved chunk, and the donor's control chunk whose bump changes its shard version.
        for at in std::iter::once(moved.moved).chain(moved.control) {
            ops.push(put(
                coll::CHUNKS,
                catalog::chunk_document(
                    &collection.chunk_ids[at],
                    &migration.ns,
                    collection.uuid,
                    &collection.map.chunks[at],
                ),
            ));
        }
        ops.push(AtomicOp::Delete {
            coll: MIGRATIONS.into(),
            id: migration.id().into(),
        });
        ops.push(put(
            RANGE_DELETIONS,
            migration.range_deletion(&migration.from),
        ));
        step("moveChunk.beforeCommit").await;
        self.commit(core, ops).await
    }

    /// Finishes or undoes `migration` from what the chunk map says: committed (the recipient
    /// owns the range) or not.
    async fn resolve_migration(
        &self,
        core: &Arc<MemberCore>,
        migration: &Migration,
    ) -> Result<(), CommandError> {
        let collection = match self.load_collection(core, &migration.ns).await {
            Ok(collection) if collection.epoch.0 == migration.epoch => collection,
            Ok(_) => return self.forget_migration(core, migration).await,
            Err(error) if error.code == ErrorCode::NAMESPACE_NOT_SHARDED => {
                return self.forget_migration(core, migration).await;
            }
            Err(error) => return Err(error),
        };
        let chunk = collection.map.chunk_for_key(&migration.min);
        let committed = chunk.shard == migration.to;
        let shards = [migration.to.clone(), migration.from.clone()];
        if committed {
            // Only a commit written by an older build leaves a doc behind; finish it.
            self.sync_filtering(core, &migration.ns, &shards).await?;
            store::apply(
                core,
                vec![AtomicOp::Delete {
                    coll: MIGRATIONS.into(),
                    id: migration.id().into(),
                }],
            )
            .await?;
            return Ok(());
        }
        // Out of the critical section in the metadata first, so no later push re-enters it.
        store::apply(core, vec![put(MIGRATIONS, migration.to_document(false))]).await?;
        self.sync_filtering(core, &migration.ns, &shards).await?;
        self.end_tracking(core, migration).await;
        store::apply(
            core,
            vec![
                AtomicOp::Delete {
                    coll: MIGRATIONS.into(),
                    id: migration.id().into(),
                },
                put(RANGE_DELETIONS, migration.range_deletion(&migration.to)),
            ],
        )
        .await?;
        tracing::info!(ns = %migration.ns, min = %migration.min, "migration aborted and cleaned up");
        Ok(())
    }

    /// Stops the donor's change tracking. Best effort: the tracker is only memory on the
    /// donor's primary, and one left behind is replaced by the next migration of the
    /// collection.
    async fn end_tracking(&self, core: &Arc<MemberCore>, migration: &Migration) {
        if let Ok(from_host) = self.shard_host(core, &migration.from).await {
            let end = doc! {"_shoalMigrateEnd": migration.ns.to_string(), "$db": "admin"};
            let _ = shard_call(core, &from_host, end).await;
        }
    }

    /// Drops the record of a migration whose collection was dropped (or dropped and sharded
    /// again) meanwhile: nothing of it is owned any more, and the shards' copies belong to an
    /// epoch no task or push will ever act on again.
    async fn forget_migration(
        &self,
        core: &Arc<MemberCore>,
        migration: &Migration,
    ) -> Result<(), CommandError> {
        self.end_tracking(core, migration).await;
        store::apply(
            core,
            vec![AtomicOp::Delete {
                coll: MIGRATIONS.into(),
                id: migration.id().into(),
            }],
        )
        .await?;
        // The migration may have pushed its critical section onto the collection's successor
        // (same namespace): push that collection's own ownership again, now that no migration
        // record holds the range.
        let shards = [migration.from.clone(), migration.to.clone()];
        self.sync_filtering(core, &migration.ns, &shards).await?;
        tracing::info!(ns = %migration.ns, "forgot the migration of a dropped collection");
        Ok(())
    }

    /// Resolves every migration a previous primary left (run by a new primary, and before each
    /// balancer round).
    pub(crate) async fn recover_migrations(
        &self,
        core: &Arc<MemberCore>,
    ) -> Result<usize, CommandError> {
        let _one_at_a_time = self.migration_lock.lock().await;
        let records = store::find_all(core, MIGRATIONS, doc! {}).await?;
        let count = records.len();
        for record in records {
            let migration = Migration::from_document(&record)?;
            tracing::info!(ns = %migration.ns, min = %migration.min, "resolving an interrupted migration");
            self.resolve_migration(core, &migration).await?;
        }
        Ok(count)
    }

    /// Pushes the ownership of `ns` to each of `shards`, computed from the chunk map (with the
    /// critical section of a migration recorded as critical). An unsharded or dropped `ns`
    /// clears it.
    pub(crate) async fn sync_filtering(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        shards: &[ShardId],
    ) -> Result<(), CommandError> {
        let _serial = self.filtering_lock.lock().await;
        let collection = match self.load_collection(core, ns).await {
            Ok(collection) => Some(collection),
            Err(error) if error.code == ErrorCode::NAMESPACE_NOT_SHARDED => None,
            Err(error) => return Err(error),
        };
        let critical = store::find_all(
            core,
            MIGRATIONS,
            doc! {"ns": ns.to_string(), "critical": true},
        )
        .await?
        .into_iter()
        .next()
        .map(|record| Migration::from_document(&record))
        .transpose()?;
        for shard in shards {
            let state = match &collection {
                Some(collection) => {
                    let held = critical
                        .as_ref()
                        .filter(|m| &m.from == shard)
                        .map(|m| (&m.min, &m.max));
                    Bson::Document(filtering_state(collection, shard, held))
                }
                None => Bson::Null,
            };
            let host = self.shard_host(core, shard).await?;
            let request = doc! {"_shoalSetFiltering": ns.to_string(), "sharding": state, "$db": ns.db.clone()};
            call_ok(core, &host, request).await?;
        }
        Ok(())
    }

    /// Every shard's id.
    pub(crate) async fn all_shards(
        &self,
        core: &Arc<MemberCore>,
    ) -> Result<Vec<ShardId>, CommandError> {
        let mut shards = Vec::new();
        for shard in store::find_all(core, coll::SHARDS, doc! {}).await? {
            if let Ok(id) = shard.get_str("_id") {
                shards.push(ShardId::new(id)?);
            }
        }
        Ok(shards)
    }

    /// `_shoalSyncShardFiltering: ns`: pushes the ownership of `ns` to every shard (routers ask
    /// when a shard answers StaleConfig with an older version than theirs).
    pub(crate) async fn sync_filtering_command(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = Namespace::parse(crate::server::string_field(
            command,
            "_shoalSyncShardFiltering",
        )?)?;
        let shards = self.all_shards(core).await?;
        self.sync_filtering(core, &ns, &shards).await?;
        Ok(doc! {"ok": 1.0})
    }

    /// Pushes every sharded collection's ownership to every shard (a new primary does this, so
    /// a commit whose pushes a crash cut off reaches the shards).
    pub(crate) async fn sync_all_filtering(
        &self,
        core: &Arc<MemberCore>,
    ) -> Result<(), CommandError> {
        let shards = self.all_shards(core).await?;
        for collection in store::find_all(core, coll::COLLECTIONS, doc! {}).await? {
            let Ok(ns) = collection.get_str("_id") else {
                continue;
            };
            let ns = Namespace::parse(ns)?;
            self.sync_filtering(core, &ns, &shards).await?;
        }
        Ok(())
    }

    /// Runs forever on the primary: resolves interrupted migrations and runs queued range
    /// deletions. Errors are logged once per outage.
    pub(crate) async fn range_deleter_loop(self, core: Arc<MemberCore>) {
        let mut failing = false;
        let mut synced_term = None;
        loop {
            tokio::time::sleep(RANGE_DELETION_INTERVAL).await;
            if !core.repl.is_primary() {
                synced_term = None;
                continue;
            }
            let result = self.deleter_pass(&core, &mut synced_term).await;
            match result {
                Ok(()) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "migration recovery or range deletion failed; retrying");
                }
                Err(_) => {}
            }
        }
    }

    async fn deleter_pass(
        &self,
        core: &Arc<MemberCore>,
        synced: &mut Option<bool>,
    ) -> Result<(), CommandError> {
        if synced.is_none() {
            self.recover_migrations(core).await?;
            self.sync_all_filtering(core).await?;
            *synced = Some(true);
        }
        for task in store::find_all(core, RANGE_DELETIONS, doc! {}).await? {
            self.run_range_deletion(core, &task).await?;
        }
        Ok(())
    }

    async fn run_range_deletion(
        &self,
        core: &Arc<MemberCore>,
        task: &Document,
    ) -> Result<(), CommandError> {
        let bad = || CommandError::internal(format!("malformed range deletion {task}"));
        let shard = ShardId::new(task.get_str("shard").map_err(|_| bad())?)?;
        let ns = Namespace::parse(task.get_str("ns").map_err(|_| bad())?)?;
        let age = task
            .get_datetime("created")
            .map(|created| {
                let millis = bson::DateTime::now().timestamp_millis() - created.timestamp_millis();
                Duration::from_millis(u64::try_from(millis).unwrap_or(0))
            })
            .map_err(|_| bad())?;
        let Ok(host) = self.shard_host(core, &shard).await else {
            // The shard is gone: so is its copy.
            return self.finish_range_deletion(core, task).await;
        };
        let cursors = doc! {"_shoalCursorsOpen": ns.to_string(), "$db": "admin"};
        let open = call_ok(core, &host, cursors).await?;
        let oldest = Duration::from_millis(
            u64::try_from(open.get_i64("oldestAgeMillis").unwrap_or(0)).unwrap_or(0),
        );
        if oldest >= age && age < RANGE_DELETION_WAIT_MAX {
            // A cursor opened before the range changed hands may still read it.
            return Ok(());
        }
        let migration = Migration {
            ns,
            key: ShardKeyPattern::parse(task.get_document("key").map_err(|_| bad())?)?,
            min: task.get_document("min").map_err(|_| bad())?.clone(),
            max: task.get_document("max").map_err(|_| bad())?.clone(),
            from: shard.clone(),
            to: shard,
            epoch: task.get_object_id("epoch").map_err(|_| bad())?,
        };
        let _one_at_a_time = self.migration_lock.lock().await;
        let still_queued = store::find_all(
            core,
            RANGE_DELETIONS,
            doc! {"_id": task.get("_id").cloned().unwrap_or(Bson::Null)},
        )
        .await?;
        if still_queued.is_empty() {
            return Ok(());
        }
        if self.delete_range_now(core, &host, &migration).await? {
            self.finish_range_deletion(core, task).await?;
            tracing::info!(ns = %migration.ns, shard = %migration.from, min = %migration.min, max = %migration.max, "range deleted");
        }
        Ok(())
    }

    async fn finish_range_deletion(
        &self,
        core: &Arc<MemberCore>,
        task: &Document,
    ) -> Result<(), CommandError> {
        let id = task.get("_id").cloned().unwrap_or(Bson::Null);
        store::apply(
            core,
            vec![AtomicOp::Delete {
                coll: RANGE_DELETIONS.into(),
                id,
            }],
        )
        .await
    }

    async fn log_migration(
        &self,
        core: &Arc<MemberCore>,
        what: &str,
        migration: &Migration,
        report: &MigrationReport,
    ) {
        let details = doc! {
            "min": migration.min.clone(), "max": migration.max.clone(),
            "from": migration.from.as_str(), "to": migration.to.as_str(),
            "docs": report.docs, "bytes": report.bytes, "ms": report.millis,
        };
        let ns = migration.ns.to_string();
        if let Err(error) = self
            .log_action(core, what, Some(&ns), details.clone())
            .await
        {
            tracing::debug!(%error, "could not record the migration in config.actionlog");
        }
        if let Err(error) = self.log_change(core, what, &ns, details).await {
            tracing::debug!(%error, "could not record the migration in config.changelog");
        }
    }

    /// MongoDB's `config.changelog` entry of a donor's migration (`moveChunk.from`, with
    /// `note: "success"` or an `errmsg`), which mongosh's `sh.status()` reads for its
    /// migration results; the newest [`CHANGELOG_MAX`] are kept.
    async fn log_change(
        &self,
        core: &Arc<MemberCore>,
        what: &str,
        ns: &str,
        mut details: Document,
    ) -> Result<(), CommandError> {
        if what == "moveChunk.commit" {
            details.insert("note", "success");
        } else {
            details.insert("errmsg", "aborted");
        }
        let time = bson::DateTime::now();
        let entry = doc! {
            "_id": format!("{}-{}-{}", core.host(), time.timestamp_millis(), ObjectId::new()),
            "server": core.host(), "time": time, "what": "moveChunk.from", "ns": ns,
            "details": details,
        };
        let existing = store::find_all(core, CHANGELOG, doc! {}).await?;
        let mut ops = vec![put(CHANGELOG, entry)];
        for id in crate::actionlog::ids_to_trim(&existing, CHANGELOG_MAX - 1) {
            ops.push(AtomicOp::Delete {
                coll: CHANGELOG.into(),
                id,
            });
        }
        store::apply(core, ops).await
    }
}
