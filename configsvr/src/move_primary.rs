//! `movePrimary: db, to: shard`: moves a database's unsharded collections (documents, indexes
//! and validation options) from its primary shard to another shard and makes that shard the
//! primary. Sharded collections stay where their chunks are; the new primary gets each of them
//! created with its indexes (no documents), since the primary holds every collection of its
//! database.
//!
//! The steps, each one safe to interrupt:
//! 1. Under the metadata lock: mark `config.databases.<db>` with `shoalMovingPrimary: {from, to,
//!    collections}` and commit (the routing version moves, so routers refresh). A router that
//!    sees the mark holds writes to the database's unsharded collections (and their DDL) until
//!    the mark is gone, then sends them to whatever primary it then reads.
//! 2. Wait [`ROUTER_CATCH_UP`] (more than twice the routers' refresh interval) so that every
//!    router reachable from the config server has seen the mark and finished the writes it had
//!    already sent.
//! 3. Fingerprint the donor's unsharded collections (names and `dbHash`), copy each to the
//!    recipient in batches of at most [`MOVE_PRIMARY_BATCH_BYTES`], fingerprint again. A
//!    different fingerprint means a write reached the donor anyway (a router that had not
//!    refreshed, or a client connected to the shard directly): the copies are dropped, the mark
//!    is cleared and the command fails with `ConflictingOperationInProgress`, nothing lost.
//! 4. Under the metadata lock: set `primary: to`, clear the mark, bump the database version, in
//!    one commit (failpoint `movePrimary.beforeCommit` just before).
//! 5. Wait [`ROUTER_CATCH_UP`] again (routers still reading from the donor finish), then drop the
//!    copied collections on the donor. A failed drop leaves invisible orphans, logged.
//!
//! A config server that dies between 1 and 4 leaves the mark; the next primary's start-up (or
//! the next `movePrimary` of that database) drops the partial copies on the recipient and clears
//! it, so the database stays on its old primary.
//!
//! Limitation: a write that reaches the donor after the second fingerprint and before routers
//! learn the new primary (a router whose last refresh is older than step 2's wait plus the copy,
//! or a client writing to the shard directly) is lost when the donor's copies are dropped. The
//! donor itself has no notion of a database being moved, so it cannot refuse such a write.
//! Index changes made directly on the donor during the copy are not detected either (`dbHash`
//! covers documents).
//!
//! While a database moves, this process refuses the metadata commands that would change it
//! (`shardCollection`, `enableSharding`, drops, another `movePrimary`) with
//! `MovePrimaryInProgress`.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode, Namespace, ShardId, failpoint, ids};
use shoal_member::MemberCore;

use crate::{
    catalog::coll,
    drain,
    server::{ConfigServer, put, shard_call, string_field},
    store,
};

/// The field of `config.databases` marking a move in progress.
pub const MOVING_FIELD: &str = "shoalMovingPrimary";
/// The most document bytes one insert into the recipient carries.
pub const MOVE_PRIMARY_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Documents per read batch from the donor (its own 16 MiB reply limit bounds the bytes).
const DONOR_READ_BATCH_DOCS: i32 = 1_000;
/// The most read batches one collection copy follows: a guard against a cursor that never ends.
const DONOR_READ_BATCHES_MAX: u64 = 100_000_000;
/// The most collections one database may have to be moved.
const MOVE_PRIMARY_COLLECTIONS_MAX: usize = 10_000;
/// How long routers get to see a metadata change: routers refresh every second.
pub const ROUTER_CATCH_UP: Duration = Duration::from_millis(2_500);
/// How long one copy call to a shard may take.
const COPY_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The databases whose primary this process is moving right now (in memory only: after a
/// restart the `config.databases` mark tells what was interrupted).
#[derive(Debug, Default)]
pub struct MovingDatabases(Mutex<BTreeSet<String>>);

impl MovingDatabases {
    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // The set stays consistent under a panic (one insert or remove), so a poisoned lock
        // is still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `db` is being moved by this process.
    pub fn contains(&self, db: &str) -> bool {
        self.set().contains(db)
    }

    /// Claims `db` for a move; `None` when a move of it already runs here.
    fn claim(self: &Arc<Self>, db: &str) -> Option<MoveClaim> {
        if !self.set().insert(db.to_owned()) {
            return None;
        }
        Some(MoveClaim {
            moving: Arc::clone(self),
            db: db.to_owned(),
        })
    }
}

/// Releases a claimed database when the move ends, however it ends.
struct MoveClaim {
    moving: Arc<MovingDatabases>,
    db: String,
}

impl Drop for MoveClaim {
    fn drop(&mut self) {
        self.moving.set().remove(&self.db);
    }
}

/// A collection to copy: its name and the options it was created with.
#[derive(Clone, Debug, PartialEq)]
struct CollectionCopy {
    name: String,
    options: Document,
}

/// One move, decided at step 1.
#[derive(Clone, Debug)]
struct MovePlan {
    db: String,
    from: ShardId,
    from_host: String,
    to: ShardId,
    to_host: String,
    /// The unsharded collections: copied, then dropped on the donor.
    collections: Vec<CollectionCopy>,
    /// The sharded collections: created with their indexes on the recipient.
    sharded: Vec<CollectionCopy>,
}

fn in_progress(db: &str) -> CommandError {
    CommandError::new(
        ErrorCode::MOVE_PRIMARY_IN_PROGRESS,
        format!("movePrimary is in progress for database {db}"),
    )
}

/// The database a metadata command changes, for the commands a move must not race with.
fn database_of_command(name: &str, command: &Document) -> Option<String> {
    let value = command.get(name)?.as_str()?;
    match name {
        "enableSharding" | "_shoalDropDatabase" => Some(value.to_owned()),
        "shardCollection" | "_shoalDropCollection" => Namespace::parse(value).ok().map(|ns| ns.db),
        _ => None,
    }
}

/// Splits the donor's `listCollections` entries into unsharded and sharded collections (by the
/// sharded names), skipping views and `system.*`.
fn classify_collections(
    entries: &[Document],
    sharded_names: &BTreeSet<String>,
) -> Result<(Vec<CollectionCopy>, Vec<CollectionCopy>), CommandError> {
    let mut unsharded = Vec::new();
    let mut sharded = Vec::new();
    for entry in entries {
        let name = entry
            .get_str("name")
            .map_err(|_| CommandError::internal(format!("listCollections entry {entry}")))?;
        if name.starts_with("system.") || entry.get_str("type").is_ok_and(|t| t != "collection") {
            continue;
        }
        let copy = CollectionCopy {
            name: name.to_owned(),
            options: entry.get_document("options").cloned().unwrap_or_default(),
        };
        if sharded_names.contains(name) {
            sharded.push(copy);
        } else {
            unsharded.push(copy);
        }
    }
    if unsharded.len() + sharded.len() > MOVE_PRIMARY_COLLECTIONS_MAX {
        return Err(CommandError::bad_value(format!(
            "movePrimary handles at most {MOVE_PRIMARY_COLLECTIONS_MAX} collections"
        )));
    }
    Ok((unsharded, sharded))
}

/// Cuts documents into insert batches of at most [`MOVE_PRIMARY_BATCH_BYTES`] (a bigger single
/// document travels alone).
#[derive(Debug, Default)]
struct InsertBatcher {
    pending: Vec<Document>,
    pending_bytes: usize,
}

impl InsertBatcher {
    /// Adds a document; returns the full batch that must be sent first, if any.
    fn push(&mut self, document: Document, bytes: usize) -> Option<Vec<Document>> {
        let full =
            if !self.pending.is_empty() && MOVE_PRIMARY_BATCH_BYTES < self.pending_bytes + bytes {
                self.pending_bytes = 0;
                Some(std::mem::take(&mut self.pending))
            } else {
                None
            };
        self.pending.push(document);
        self.pending_bytes += bytes;
        full
    }

    /// The last, partial batch.
    fn finish(self) -> Option<Vec<Document>> {
        (!self.pending.is_empty()).then_some(self.pending)
    }
}

/// The index specifications of a `listIndexes` reply to recreate: all but `_id_`, without the
/// fields `createIndexes` does not take.
fn indexes_to_create(listed: &[Document]) -> Vec<Document> {
    listed
        .iter()
        .filter(|spec| spec.get_str("name") != Ok("_id_"))
        .map(|spec| {
            let mut spec = spec.clone();
            spec.remove("v");
            spec.remove("ns");
            spec
        })
        .collect()
}

/// `config.databases` document with the primary changed, the mark removed and the version's
/// `lastMod` raised.
fn committed_database(db_doc: &Document, to: &ShardId) -> Document {
    let mut committed = db_doc.clone();
    committed.remove(MOVING_FIELD);
    committed.insert("primary", to.as_str());
    if let Ok(version) = committed.get_document_mut("version") {
        let last_mod = match version.get("lastMod") {
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(Bson::Int64(n)) => *n,
            _ => 0,
        };
        let next = last_mod.saturating_add(1);
        version.insert(
            "lastMod",
            i32::try_from(next).map_or(Bson::Int64(next), Bson::Int32),
        );
    }
    committed
}

fn marked_target(db_doc: &Document) -> Option<(ShardId, Vec<String>)> {
    let mark = db_doc.get_document(MOVING_FIELD).ok()?;
    let to = ShardId::new(mark.get_str("to").ok()?).ok()?;
    let names = mark
        .get_array("collections")
        .map(|names| {
            names
                .iter()
                .filter_map(Bson::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some((to, names))
}

fn reply_ok(reply: Document) -> Result<Document, CommandError> {
    if let Some(error) = CommandError::from_reply(&reply) {
        return Err(error);
    }
    if let Ok(errors) = reply.get_array("writeErrors")
        && let Some(Bson::Document(first)) = errors.first()
    {
        return Err(CommandError::from_reply(&doc! {
            "ok": 0.0,
            "code": first.get("code").cloned().unwrap_or(Bson::Int32(ErrorCode::INTERNAL_ERROR.0)),
            "errmsg": first.get_str("errmsg").unwrap_or("write error during movePrimary"),
        })
        .unwrap_or_else(|| CommandError::internal("write error during movePrimary")));
    }
    if let Ok(concern) = reply.get_document("writeConcernError") {
        return Err(CommandError::new(
            ErrorCode::WRITE_CONCERN_TIMEOUT,
            format!("movePrimary write not replicated in time: {concern}"),
        ));
    }
    Ok(reply)
}

/// Sends `command` to database `db` on the primary of the shard at `target` (or to one member,
/// given as `host:port`); returns the member that answered and its checked reply.
async fn call_member(
    core: &Arc<MemberCore>,
    target: &str,
    db: &str,
    command: Document,
) -> Result<(String, Document), CommandError> {
    let (member, reply) = core
        .topology
        .call(
            target,
            db,
            command,
            shoal_repl::ReadPreference::PRIMARY,
            COPY_CALL_TIMEOUT,
        )
        .await?;
    Ok((member, reply_ok(reply)?))
}

fn cursor_batch(reply: &Document, field: &str) -> Result<(Vec<Document>, i64), CommandError> {
    let cursor = reply
        .get_document("cursor")
        .map_err(|_| CommandError::internal("shard reply without cursor"))?;
    let batch = cursor
        .get_array(field)
        .map_err(|_| CommandError::internal("shard cursor reply without batch"))?;
    let docs = batch
        .iter()
        .filter_map(|d| d.as_document().cloned())
        .collect();
    Ok((docs, cursor.get_i64("id").unwrap_or(0)))
}

/// Runs a cursor command on `target` and returns every document (for the small listings:
/// collections, indexes).
async fn read_listing(
    core: &Arc<MemberCore>,
    target: &str,
    db: &str,
    command: Document,
    coll: &str,
) -> Result<Vec<Document>, CommandError> {
    let (member, first) = call_member(core, target, db, command).await?;
    let (mut docs, mut cursor_id) = cursor_batch(&first, "firstBatch")?;
    while cursor_id != 0 {
        if docs.len() > MOVE_PRIMARY_COLLECTIONS_MAX {
            return Err(CommandError::internal(format!(
                "listing of {db} is too long"
            )));
        }
        let get_more = doc! {"getMore": cursor_id, "collection": coll};
        let (_, next) = call_member(core, &member, db, get_more).await?;
        let (more, id) = cursor_batch(&next, "nextBatch")?;
        docs.extend(more);
        cursor_id = id;
    }
    Ok(docs)
}

async fn list_collections(
    core: &Arc<MemberCore>,
    target: &str,
    db: &str,
) -> Result<Vec<Document>, CommandError> {
    let command = doc! {"listCollections": 1, "cursor": {}};
    read_listing(core, target, db, command, "$cmd.listCollections").await
}

impl ConfigServer {
    /// Refuses a metadata command that changes a database this process is moving.
    pub(crate) fn refuse_while_moving(
        &self,
        name: &str,
        command: &Document,
    ) -> Result<(), CommandError> {
        match database_of_command(name, command) {
            Some(db) if self.moving_databases.contains(&db) => Err(in_progress(&db)),
            _ => Ok(()),
        }
    }

    /// `movePrimary: db, to: shard` (takes the metadata lock itself, only for its commits).
    pub(crate) async fn move_primary(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let db = string_field(command, "movePrimary")?;
        ids::validate_db_name(db)?;
        if matches!(db, "admin" | "config" | "local") {
            return Err(CommandError::new(
                ErrorCode::INVALID_OPTIONS,
                format!("Can't move primary for {db} database"),
            ));
        }
        let to = ShardId::new(string_field(command, "to")?)?;
        let Some(_claim) = self.moving_databases.claim(db) else {
            return Err(in_progress(db));
        };
        let plan = {
            let _guard = self.metadata_lock.lock().await;
            self.begin_move(core, db, &to).await?
        };
        let Some(plan) = plan else {
            return Ok(
                doc! {"primary": to.as_str(), "note": "it is already the primary", "ok": 1.0},
            );
        };
        self.copy_and_commit(core, &plan).await?;
        tokio::time::sleep(ROUTER_CATCH_UP).await;
        self.drop_collections(core, &plan.from_host, db, &plan.collections)
            .await;
        Ok(doc! {"primary": to.as_str(), "ok": 1.0})
    }

    /// Step 1: checks the move, marks the database and commits. `None` when `to` already is
    /// the primary.
    async fn begin_move(
        &self,
        core: &Arc<MemberCore>,
        db: &str,
        to: &ShardId,
    ) -> Result<Option<MovePlan>, CommandError> {
        let Some(mut db_doc) = store::find_one(core, coll::DATABASES, db).await? else {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_NOT_FOUND,
                format!("Database {db} not found"),
            ));
        };
        if db_doc.contains_key(MOVING_FIELD) {
            self.clean_up_interrupted(core, db, &db_doc).await?;
            db_doc.remove(MOVING_FIELD);
        }
        let Some(to_doc) = store::find_one(core, coll::SHARDS, to.as_str()).await? else {
            return Err(CommandError::new(
                ErrorCode::SHARD_NOT_FOUND,
                format!("Shard {to} not found"),
            ));
        };
        if drain::is_draining(&to_doc) {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                format!("cannot move the primary of {db} to {to}: the shard is draining"),
            ));
        }
        let from = ShardId::new(db_doc.get_str("primary").map_err(|_| {
            CommandError::internal(format!("config.databases entry for {db} has no primary"))
        })?)?;
        if from == *to {
            return Ok(None);
        }
        let plan = self.plan_move(core, db, from, to.clone()).await?;
        let names: Vec<&str> = plan.collections.iter().map(|c| c.name.as_str()).collect();
        db_doc.insert(
            MOVING_FIELD,
            doc! {"from": plan.from.as_str(), "to": to.as_str(), "collections": names},
        );
        self.commit(core, vec![put(coll::DATABASES, db_doc)])
            .await?;
        tracing::info!(db, from = %plan.from, to = %to, collections = plan.collections.len(), "movePrimary started");
        Ok(Some(plan))
    }

    /// Reads what must move and checks the recipient holds none of it.
    async fn plan_move(
        &self,
        core: &Arc<MemberCore>,
        db: &str,
        from: ShardId,
        to: ShardId,
    ) -> Result<MovePlan, CommandError> {
        let from_host = self.shard_host(core, &from).await?;
        let to_host = self.shard_host(core, &to).await?;
        let sharded_names = self.sharded_collection_names(core, db).await?;
        let donor = list_collections(core, &from_host, db).await?;
        let (collections, sharded) = classify_collections(&donor, &sharded_names)?;
        let recipient = list_collections(core, &to_host, db).await?;
        for entry in &recipient {
            let name = entry.get_str("name").unwrap_or_default();
            if collections.iter().any(|c| c.name == name) {
                return Err(CommandError::new(
                    ErrorCode::NAMESPACE_EXISTS,
                    format!(
                        "cannot move the primary of {db} to {to}: it already holds an \
                         unsharded collection {db}.{name}"
                    ),
                ));
            }
        }
        Ok(MovePlan {
            db: db.to_owned(),
            from,
            from_host,
            to,
            to_host,
            collections,
            sharded,
        })
    }

    async fn sharded_collection_names(
        &self,
        core: &Arc<MemberCore>,
        db: &str,
    ) -> Result<BTreeSet<String>, CommandError> {
        let mut names = BTreeSet::new();
        for collection in store::find_all(core, coll::COLLECTIONS, doc! {}).await? {
            let Ok(ns) = collection.get_str("_id") else {
                continue;
            };
            if let Ok(ns) = Namespace::parse(ns)
                && ns.db == db
            {
                names.insert(ns.coll);
            }
        }
        Ok(names)
    }

    /// Steps 2 to 4; on failure before the commit, undoes step 1.
    async fn copy_and_commit(
        &self,
        core: &Arc<MemberCore>,
        plan: &MovePlan,
    ) -> Result<(), CommandError> {
        tokio::time::sleep(ROUTER_CATCH_UP).await;
        if let Err(error) = self.copy_all(core, plan).await {
            tracing::warn!(db = %plan.db, error = %error, "movePrimary copy failed; undoing");
            self.abort_move(core, plan).await;
            return Err(error);
        }
        let Err(error) = self.commit_move(core, plan).await else {
            tracing::info!(db = %plan.db, to = %plan.to, "movePrimary committed");
            return Ok(());
        };
        // The commit may have been applied even though it reported an error: only undo what
        // certainly did not commit.
        match store::find_one(core, coll::DATABASES, plan.db.as_str()).await {
            Ok(Some(db_doc)) if db_doc.get_str("primary") == Ok(plan.to.as_str()) => {
                tracing::info!(db = %plan.db, to = %plan.to, "movePrimary committed despite an error reply");
                Ok(())
            }
            Ok(_) => {
                self.abort_move(core, plan).await;
                Err(error)
            }
            Err(_) => Err(error),
        }
    }

    /// Step 3: copies every collection and checks the donor did not change meanwhile.
    async fn copy_all(&self, core: &Arc<MemberCore>, plan: &MovePlan) -> Result<(), CommandError> {
        let before = self.donor_fingerprint(core, plan).await?;
        for collection in &plan.collections {
            self.copy_collection(core, plan, collection).await?;
        }
        for collection in &plan.sharded {
            self.copy_definition(core, plan, collection, true).await?;
        }
        let after = self.donor_fingerprint(core, plan).await?;
        if before != after {
            return Err(CommandError::new(
                ErrorCode::CONFLICTING_OPERATION_IN_PROGRESS,
                format!(
                    "writes reached {} directly while movePrimary copied {}; nothing was \
                     moved, retry movePrimary",
                    plan.from, plan.db
                ),
            ));
        }
        Ok(())
    }

    /// The donor's unsharded collection names and their `dbHash`.
    async fn donor_fingerprint(
        &self,
        core: &Arc<MemberCore>,
        plan: &MovePlan,
    ) -> Result<Document, CommandError> {
        let sharded: BTreeSet<String> = plan.sharded.iter().map(|c| c.name.clone()).collect();
        let listed = list_collections(core, &plan.from_host, &plan.db).await?;
        let (unsharded, _) = classify_collections(&listed, &sharded)?;
        let mut names: Vec<String> = unsharded.into_iter().map(|c| c.name).collect();
        names.sort();
        let hash = doc! {"dbHash": 1, "collections": names.clone()};
        let (_, reply) = call_member(core, &plan.from_host, &plan.db, hash).await?;
        Ok(doc! {
            "names": names,
            "collections": reply.get("collections").cloned().unwrap_or(Bson::Null),
        })
    }

    /// Creates the collection with its indexes on the recipient. For a sharded collection an
    /// existing one is fine (the recipient may own chunks of it).
    async fn copy_definition(
        &self,
        core: &Arc<MemberCore>,
        plan: &MovePlan,
        collection: &CollectionCopy,
        may_exist: bool,
    ) -> Result<(), CommandError> {
        let create = doc! {"create": collection.name.clone()};
        match call_member(core, &plan.to_host, &plan.db, create).await {
            Ok(_) => {}
            Err(error) if may_exist && error.code == ErrorCode::NAMESPACE_EXISTS => {}
            Err(error) => return Err(error),
        }
        let list = doc! {"listIndexes": collection.name.clone(), "cursor": {}};
        let listed = read_listing(core, &plan.from_host, &plan.db, list, &collection.name).await?;
        let indexes = indexes_to_create(&listed);
        if indexes.is_empty() {
            return Ok(());
        }
        let create_indexes = doc! {"createIndexes": collection.name.clone(), "indexes": indexes};
        call_member(core, &plan.to_host, &plan.db, create_indexes).await?;
        Ok(())
    }

    async fn copy_collection(
        &self,
        core: &Arc<MemberCore>,
        plan: &MovePlan,
        collection: &CollectionCopy,
    ) -> Result<(), CommandError> {
        self.copy_definition(core, plan, collection, false).await?;
        let copied = self.copy_documents(core, plan, &collection.name).await?;
        // Validation comes last: documents already on the donor are copied as they are.
        if !collection.options.is_empty() {
            let mut coll_mod = doc! {"collMod": collection.name.clone()};
            coll_mod.extend(collection.options.clone());
            call_member(core, &plan.to_host, &plan.db, coll_mod).await?;
        }
        tracing::info!(db = %plan.db, collection = %collection.name, documents = copied, "collection copied");
        Ok(())
    }

    async fn copy_documents(
        &self,
        core: &Arc<MemberCore>,
        plan: &MovePlan,
        name: &str,
    ) -> Result<u64, CommandError> {
        let find = doc! {"find": name, "batchSize": DONOR_READ_BATCH_DOCS};
        let (member, first) = call_member(core, &plan.from_host, &plan.db, find).await?;
        let (mut docs, mut cursor_id) = cursor_batch(&first, "firstBatch")?;
        let mut batcher = InsertBatcher::default();
        let mut copied = 0_u64;
        for _ in 0..DONOR_READ_BATCHES_MAX {
            for document in docs.drain(..) {
                let bytes = bson::to_vec(&document).map(|raw| raw.len()).unwrap_or(0);
                if let Some(batch) = batcher.push(document, bytes) {
                    copied += self.insert_batch(core, plan, name, batch).await?;
                }
            }
            if cursor_id == 0 {
                break;
            }
            let get_more =
                doc! {"getMore": cursor_id, "collection": name, "batchSize": DONOR_READ_BATCH_DOCS};
            let (_, next) = call_member(core, &member, &plan.db, get_more).await?;
            (docs, cursor_id) = cursor_batch(&next, "nextBatch")?;
        }
        if cursor_id != 0 {
            return Err(CommandError::internal(format!(
                "{}.{name} did not end after {DONOR_READ_BATCHES_MAX} batches",
                plan.db
            )));
        }
        if let Some(batch) = batcher.finish() {
            copied += self.insert_batch(core, plan, name, batch).await?;
        }
        Ok(copied)
    }

    async fn insert_batch(
        &self,
        core: &Arc<MemberCore>,
        plan: &MovePlan,
        name: &str,
        batch: Vec<Document>,
    ) -> Result<u64, CommandError> {
        let count = batch.len() as u64;
        let insert = doc! {"insert": name, "documents": batch, "ordered": true};
        call_member(core, &plan.to_host, &plan.db, insert).await?;
        Ok(count)
    }

    /// Step 4.
    async fn commit_move(
        &self,
        core: &Arc<MemberCore>,
        plan: &MovePlan,
    ) -> Result<(), CommandError> {
        let _guard = self.metadata_lock.lock().await;
        let db_doc = store::find_one(core, coll::DATABASES, plan.db.as_str()).await?;
        let Some(db_doc) = db_doc else {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_NOT_FOUND,
                format!("database {} was dropped during movePrimary", plan.db),
            ));
        };
        // Start-up recovery of another config primary may have undone this move meanwhile.
        if marked_target(&db_doc).map(|(to, _)| to) != Some(plan.to.clone()) {
            return Err(CommandError::new(
                ErrorCode::CONFLICTING_OPERATION_IN_PROGRESS,
                format!("movePrimary of {} was interrupted; run it again", plan.db),
            ));
        }
        failpoint::hit("movePrimary.beforeCommit");
        let committed = committed_database(&db_doc, &plan.to);
        self.commit(core, vec![put(coll::DATABASES, committed)])
            .await
    }

    /// Undoes step 1 after a failed copy: drops the copies, then clears the mark. A copy that
    /// cannot be dropped keeps the mark, so that a later clean-up retries.
    async fn abort_move(&self, core: &Arc<MemberCore>, plan: &MovePlan) {
        let names: Vec<String> = plan.collections.iter().map(|c| c.name.clone()).collect();
        if let Err(error) = self
            .drop_copies(core, &plan.to_host, &plan.db, &names)
            .await
        {
            tracing::warn!(db = %plan.db, error = %error, "cannot drop movePrimary copies; the next movePrimary or config start-up retries");
            return;
        }
        let _guard = self.metadata_lock.lock().await;
        if let Err(error) = self.clear_mark(core, &plan.db, &plan.to).await {
            tracing::warn!(db = %plan.db, error = %error, "cannot clear the movePrimary mark");
        }
    }

    async fn clear_mark(
        &self,
        core: &Arc<MemberCore>,
        db: &str,
        to: &ShardId,
    ) -> Result<(), CommandError> {
        let Some(mut db_doc) = store::find_one(core, coll::DATABASES, db).await? else {
            return Ok(());
        };
        if marked_target(&db_doc).map(|(marked, _)| marked) != Some(to.clone()) {
            return Ok(());
        }
        db_doc.remove(MOVING_FIELD);
        self.commit(core, vec![put(coll::DATABASES, db_doc)]).await
    }

    /// Drops `names` of `db` on the shard at `host`; a missing collection is fine.
    async fn drop_copies(
        &self,
        core: &Arc<MemberCore>,
        host: &str,
        db: &str,
        names: &[String],
    ) -> Result<(), CommandError> {
        for name in names {
            let drop = doc! {"drop": name.clone(), "$db": db};
            let reply = shard_call(core, host, drop).await?;
            match CommandError::from_reply(&reply) {
                Some(error) if error.code != ErrorCode::NAMESPACE_NOT_FOUND => return Err(error),
                _ => {}
            }
        }
        Ok(())
    }

    /// Step 5: best effort, the donor's copies are invisible once the primary moved.
    async fn drop_collections(
        &self,
        core: &Arc<MemberCore>,
        host: &str,
        db: &str,
        collections: &[CollectionCopy],
    ) {
        let names: Vec<String> = collections.iter().map(|c| c.name.clone()).collect();
        if let Err(error) = self.drop_copies(core, host, db, &names).await {
            tracing::warn!(db, error = %error, "cannot drop moved collections on the old primary; they stay as orphans");
        }
    }

    /// Drops the partial copies an interrupted move left on its recipient (the caller holds
    /// the metadata lock and clears the mark).
    async fn clean_up_interrupted(
        &self,
        core: &Arc<MemberCore>,
        db: &str,
        db_doc: &Document,
    ) -> Result<(), CommandError> {
        let Some((to, names)) = marked_target(db_doc) else {
            return Ok(());
        };
        let host = match self.shard_host(core, &to).await {
            Ok(host) => host,
            // The recipient was removed since: nothing of it is left to clean.
            Err(error) if error.code == ErrorCode::SHARD_NOT_FOUND => return Ok(()),
            Err(error) => return Err(error),
        };
        self.drop_copies(core, &host, db, &names).await?;
        tracing::info!(db, to = %to, "interrupted movePrimary cleaned up");
        Ok(())
    }

    /// Run at start-up by a new config primary: undoes the moves an earlier primary left
    /// marked (see the module documentation). Failures are logged; a later `movePrimary` of the
    /// database retries the clean-up.
    pub(crate) async fn recover_interrupted_moves(self, core: Arc<MemberCore>) {
        let filter = doc! {MOVING_FIELD: {"$exists": true}};
        let marked = match store::find_all(&core, coll::DATABASES, filter).await {
            Ok(marked) => marked,
            Err(error) => {
                tracing::warn!(error = %error, "cannot look for interrupted movePrimary");
                return;
            }
        };
        for db_doc in marked {
            let Ok(db) = db_doc.get_str("_id") else {
                continue;
            };
            let Some(_claim) = self.moving_databases.claim(db) else {
                continue;
            };
            let _guard = self.metadata_lock.lock().await;
            let outcome = match self.clean_up_interrupted(&core, db, &db_doc).await {
                Ok(()) => match marked_target(&db_doc) {
                    Some((to, _)) => self.clear_mark(&core, db, &to).await,
                    None => Ok(()),
                },
                Err(error) => Err(error),
            };
            if let Err(error) = outcome {
                tracing::warn!(db, error = %error, "cannot undo an interrupted movePrimary");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsharded_and_sharded_collections_are_told_apart() {
        let entries = vec![
            doc! {"name": "a", "type": "collection", "options": {}},
            doc! {"name": "s", "type": "collection", "options": {}},
            doc! {"name": "v", "type": "view", "options": {"viewOn": "a"}},
            doc! {"name": "system.views", "type": "collection"},
            doc! {"name": "b", "type": "collection", "options": {"validator": {"x": 1}}},
        ];
        let sharded: BTreeSet<String> = ["s".to_owned()].into();
        let (unsharded, sharded) = classify_collections(&entries, &sharded).unwrap();
        let names: Vec<&str> = unsharded.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(unsharded[1].options, doc! {"validator": {"x": 1}});
        assert_eq!(sharded.len(), 1);
        assert!(classify_collections(&[doc! {"type": "collection"}], &BTreeSet::new()).is_err());
    }

    #[test]
    fn insert_batches_stay_under_the_byte_limit() {
        let mut batcher = InsertBatcher::default();
        let third = MOVE_PRIMARY_BATCH_BYTES / 3;
        let mut sent = Vec::new();
        for i in 0..7 {
            if let Some(batch) = batcher.push(doc! {"_id": i}, third) {
                sent.push(batch.len());
            }
        }
        sent.extend(batcher.finish().map(|b| b.len()));
        assert_eq!(sent, [3, 3, 1]);
        let mut alone = InsertBatcher::default();
        assert!(
            alone
                .push(doc! {"_id": 0}, MOVE_PRIMARY_BATCH_BYTES * 2)
                .is_none()
        );
        assert_eq!(alone.push(doc! {"_id": 1}, 1).map(|b| b.len()), Some(1));
        assert!(InsertBatcher::default().finish().is_none());
    }

    #[test]
    fn index_specs_are_recreated_without_the_id_index() {
        let listed = vec![
            doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            doc! {"v": 2, "key": {"x": 1}, "name": "x_1", "unique": true},
        ];
        assert_eq!(
            indexes_to_create(&listed),
            vec![doc! {"key": {"x": 1}, "name": "x_1", "unique": true}]
        );
    }

    #[test]
    fn the_commit_moves_the_primary_and_clears_the_mark() {
        let db_doc = doc! {
            "_id": "d", "primary": "s0",
            "version": {"lastMod": 1},
            MOVING_FIELD: {"from": "s0", "to": "s1", "collections": ["a"]},
        };
        let (to, names) = marked_target(&db_doc).unwrap();
        assert_eq!(to.as_str(), "s1");
        assert_eq!(names, ["a"]);
        let committed = committed_database(&db_doc, &to);
        assert_eq!(committed.get_str("primary").unwrap(), "s1");
        assert!(!committed.contains_key(MOVING_FIELD));
        assert_eq!(
            committed.get_document("version").unwrap().get("lastMod"),
            Some(&Bson::Int32(2))
        );
        assert!(marked_target(&committed).is_none());
    }

    #[test]
    fn commands_racing_a_move_are_recognised() {
        let db = |name: &str, value: &str| database_of_command(name, &doc! {name: value});
        assert_eq!(db("shardCollection", "d.c").as_deref(), Some("d"));
        assert_eq!(db("_shoalDropDatabase", "d").as_deref(), Some("d"));
        assert_eq!(db("enableSharding", "d").as_deref(), Some("d"));
        assert_eq!(db("split", "d.c"), None);
        let moving = Arc::new(MovingDatabases::default());
        let claim = moving.claim("d");
        assert!(claim.is_some());
        assert!(moving.claim("d").is_none());
        assert!(moving.contains("d"));
        drop(claim);
        assert!(!moving.contains("d"));
    }

    #[test]
    fn write_errors_fail_the_copy() {
        let reply =
            doc! {"ok": 1.0, "n": 0, "writeErrors": [{"index": 0, "code": 11000, "errmsg": "dup"}]};
        assert_eq!(reply_ok(reply).unwrap_err().code, ErrorCode::DUPLICATE_KEY);
        assert!(reply_ok(doc! {"ok": 1.0, "n": 1}).is_ok());
        assert!(reply_ok(doc! {"ok": 0.0, "errmsg": "x", "code": 2}).is_err());
    }
}
