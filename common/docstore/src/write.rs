//! The write commands: `insert`, `update`, `delete` and `findAndModify`.
//!
//! Per-statement failures (a duplicate `_id`, an invalid update) become `writeErrors` entries
//! with `ok: 1`; an ordered batch stops at the first one, an unordered batch goes on. Storage
//! failures abort the whole command and nothing of it is written. All of a command's writes are
//! staged in one [`Txn`] and committed as one synced batch (see the engine module doc).

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode};
use shoal_query::{Filter, Update, error::QueryError};

use crate::{
    args::{Fields, collection_ns, documents},
    catalog,
    engine::Engine,
    error::StoreError,
    index,
    keys::{CollectionEntry, doc_key, encode_document},
    matching::find_matching,
    shard_key::ShardKeyGuard,
    txn::{Reader, Txn},
};

/// Largest stored document, as MongoDB's `BSONObjMaxUserSize`.
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most statements in one write command, as MongoDB's `maxWriteBatchSize`.
pub const WRITE_BATCH_STATEMENTS_MAX: usize = 100_000;

/// MongoDB's `InvalidLength`.
const INVALID_LENGTH: ErrorCode = ErrorCode(16);

/// Why one statement of a write batch failed.
pub(crate) enum StmtError {
    /// Reported in `writeErrors`; the batch may go on.
    Write(CommandError),
    /// Storage failed: the whole command fails and nothing is written.
    Fatal(StoreError),
}

impl From<StoreError> for StmtError {
    fn from(err: StoreError) -> StmtError {
        StmtError::Fatal(err)
    }
}

impl From<CommandError> for StmtError {
    fn from(err: CommandError) -> StmtError {
        StmtError::Write(err)
    }
}

impl From<QueryError> for StmtError {
    fn from(err: QueryError) -> StmtError {
        StmtError::Write(CommandError::from(err))
    }
}

impl From<StmtError> for CommandError {
    fn from(err: StmtError) -> CommandError {
        match err {
            StmtError::Write(err) => err,
            StmtError::Fatal(err) => CommandError::from(err),
        }
    }
}

/// Collects the outcome of a batch of statements.
#[derive(Default)]
struct BatchResult {
    n: u64,
    modified: u64,
    upserted: Vec<Document>,
    write_errors: Vec<Document>,
}

impl BatchResult {
    /// Records a failed statement; returns whether the batch must stop.
    fn fail(&mut self, index: usize, err: StmtError, ordered: bool) -> Result<bool, CommandError> {
        match err {
            StmtError::Fatal(err) => Err(err.into()),
            StmtError::Write(err) => {
                self.write_errors.push(write_error(index, &err));
                Ok(ordered)
            }
        }
    }

    fn into_reply(self, with_modified: bool) -> Document {
        let mut reply = doc! {"n": count_i32(self.n)};
        if with_modified {
            reply.insert("nModified", count_i32(self.modified));
        }
        if !self.upserted.is_empty() {
            reply.insert("upserted", self.upserted);
        }
        if !self.write_errors.is_empty() {
            reply.insert("writeErrors", self.write_errors);
        }
        reply
    }
}

/// A count as the Int32 MongoDB replies with (batches are far below i32::MAX statements, but
/// a multi-update can touch more documents; saturate rather than wrap).
pub(crate) fn count_i32(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn write_error(index: usize, err: &CommandError) -> Document {
    let mut entry = doc! {
        "index": count_i32(index as u64),
        "code": err.code.0,
        "codeName": err.code.name().into_owned(),
        "errmsg": err.errmsg.clone(),
    };
    for (key, value) in &err.extra {
        entry.insert(key.clone(), value.clone());
    }
    entry
}

fn check_batch_len(len: usize) -> Result<(), CommandError> {
    if len == 0 || len > WRITE_BATCH_STATEMENTS_MAX {
        return Err(CommandError::new(
            INVALID_LENGTH,
            format!(
                "Write batch sizes must be between 1 and {WRITE_BATCH_STATEMENTS_MAX}. Got {len} operations."
            ),
        ));
    }
    Ok(())
}

/// DuplicateKey on the `_id` index, with the fields drivers read.
pub(crate) fn duplicate_key(ns: &str, id: &Bson) -> CommandError {
    let mut err = CommandError::new(
        ErrorCode::DUPLICATE_KEY,
        format!("E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {id} }}"),
    );
    err.extra = doc! {"keyPattern": {"_id": 1}, "keyValue": {"_id": id.clone()}};
    err
}

fn too_large(size: usize) -> CommandError {
    CommandError::new(
        ErrorCode::BSON_OBJECT_TOO_LARGE,
        format!(
            "object to insert too large. size in bytes: {size}, max size: {DOCUMENT_BYTES_MAX}"
        ),
    )
}

fn validate_id(id: &Bson) -> Result<(), CommandError> {
    let why = match id {
        Bson::Array(_) => "The '_id' value cannot be of type array",
        Bson::RegularExpression(_) => "can't use a regex for _id",
        Bson::Undefined => "can't use a undefined for _id",
        _ => return Ok(()),
    };
    Err(CommandError::new(ErrorCode::INVALID_ID_FIELD, why))
}

/// A document ready to store: `_id` first, encoded, size-checked.
pub(crate) struct Prepared {
    pub id: Bson,
    pub document: Document,
    pub bytes: Vec<u8>,
}

/// Puts `_id` first (generating an ObjectId when missing), validates it, encodes and checks
/// the size.
pub(crate) fn prepare(document: &Document) -> Result<Prepared, CommandError> {
    let id = match document.get("_id") {
        Some(id) => {
            validate_id(id)?;
            id.clone()
        }
        None => Bson::ObjectId(shoal_common::determinism::new_object_id()),
    };
    let mut stored = Document::new();
    stored.insert("_id", id.clone());
    for (key, value) in document {
        if key != "_id" {
            stored.insert(key.clone(), value.clone());
        }
    }
    let bytes = encode_document(&stored);
    if bytes.len() > DOCUMENT_BYTES_MAX {
        return Err(too_large(bytes.len()));
    }
    Ok(Prepared {
        id,
        document: stored,
        bytes,
    })
}

fn check_top_level_names(document: &Document) -> Result<(), CommandError> {
    for key in document.keys() {
        if key.starts_with('$') {
            return Err(CommandError::new(
                ErrorCode::DOLLAR_PREFIXED_FIELD_NAME,
                format!("Document can't have $ prefixed field names: {key}"),
            ));
        }
    }
    Ok(())
}

/// Stages the insert of a prepared document with its index entries, creating the collection
/// when needed. `cached` keeps the catalog entry between the statements of one command (the
/// entry changes only through this overlay, and [`index::stage_document`] keeps it current).
fn stage_new(
    txn: &mut Txn<'_>,
    ns: &str,
    cached: &mut Option<CollectionEntry>,
    prepared: Prepared,
) -> Result<(), StmtError> {
    let entry = match cached {
        Some(entry) => entry,
        None => cached.insert(catalog::ensure(txn, ns)?),
    };
    let key = doc_key(entry.id, &prepared.id);
    if txn.get(crate::kv::Space::Docs, &key)?.is_some() {
        return Err(StmtError::Write(duplicate_key(ns, &prepared.id)));
    }
    index::stage_document(txn, entry, key, None, &prepared.document, prepared.bytes)
}

/// One parsed `update` statement.
struct UpdateStatement<'a> {
    q: &'a Document,
    u: &'a Bson,
    upsert: bool,
    multi: bool,
    array_filters: Option<&'a [Bson]>,
}

impl<'a> UpdateStatement<'a> {
    fn parse(statement: &'a Document) -> Result<UpdateStatement<'a>, CommandError> {
        let fields = Fields::new(statement, "update.updates");
        let q = fields.doc("q")?.ok_or_else(|| fields.missing("q"))?;
        let u = match statement.get("u") {
            Some(u @ (Bson::Document(_) | Bson::Array(_))) => u,
            Some(other) => {
                return Err(CommandError::type_mismatch(
                    "update.updates.u",
                    "object",
                    other,
                ));
            }
            None => return Err(fields.missing("u")),
        };
        Ok(UpdateStatement {
            q,
            u,
            upsert: fields.flag("upsert", false)?,
            multi: fields.flag("multi", false)?,
            array_filters: fields.array("arrayFilters")?,
        })
    }
}

/// What one update statement did.
struct UpdateOutcome {
    matched: u64,
    modified: u64,
    upserted: Option<Bson>,
}

/// Applies `update` to `old`; `None` when nothing changed, else the new encoded document.
/// With a `guard`, a change of the shard key fails the update.
pub(crate) fn apply_update(
    update: &Update,
    old: &Document,
    guard: Option<&ShardKeyGuard>,
) -> Result<Option<Prepared>, CommandError> {
    let new = update.apply(old, false)?;
    let old_id = old.get("_id").cloned().unwrap_or(Bson::Null);
    match new.get("_id") {
        Some(new_id) if *new_id != old_id => {
            return Err(CommandError::new(
                ErrorCode::IMMUTABLE_FIELD,
                format!(
                    "Performing an update on the path '_id' would modify the immutable field '_id' \
                     (from {old_id} to {new_id})"
                ),
            ));
        }
        _ => {}
    }
    let mut with_id = new;
    with_id.insert("_id", old_id);
    let prepared = prepare(&with_id)?;
    if prepared.document == *old {
        return Ok(None);
    }
    if let Some(guard) = guard {
        guard.check_update(old, &prepared.document)?;
    }
    Ok(Some(prepared))
}

/// Builds, checks (with the shard-key `guard` too, when there is one) and stages the document
/// an upsert inserts.
pub(crate) fn stage_upsert(
    txn: &mut Txn<'_>,
    ns: &str,
    update: &Update,
    query: &Document,
    guard: Option<&ShardKeyGuard>,
) -> Result<(Bson, Document), StmtError> {
    let document = update.upsert_document(query)?;
    check_top_level_names(&document)?;
    let prepared = prepare(&document)?;
    if let Some(guard) = guard {
        guard.check_upsert(&prepared.document)?;
    }
    let id = prepared.id.clone();
    let stored = prepared.document.clone();
    stage_new(txn, ns, &mut None, prepared)?;
    Ok((id, stored))
}

impl Engine {
    /// `insert`.
    pub(crate) fn insert(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "insert")?.to_string();
        let fields = Fields::new(command, "insert");
        let items = fields
            .array("documents")?
            .ok_or_else(|| fields.missing("documents"))?;
        let items = documents(items, "insert.documents")?;
        check_batch_len(items.len())?;
        let ordered = fields.flag("ordered", true)?;
        let mut result = BatchResult::default();
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        let mut entry = None;
        for (index, document) in items.into_iter().enumerate() {
            let staged = check_top_level_names(document)
                .and_then(|()| prepare(document))
                .map_err(StmtError::Write)
                .and_then(|prepared| stage_new(&mut txn, &ns, &mut entry, prepared));
            match staged {
                Ok(_) => result.n += 1,
                Err(err) => {
                    if result.fail(index, err, ordered)? {
                        break;
                    }
                }
            }
        }
        txn.commit()?;
        self.count_inserts(result.n);
        Ok(result.into_reply(false))
    }

    /// `update`.
    pub(crate) fn update(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "update")?.to_string();
        let fields = Fields::new(command, "update");
        let items = fields
            .array("updates")?
            .ok_or_else(|| fields.missing("updates"))?;
        let statements = documents(items, "update.updates")?
            .into_iter()
            .map(UpdateStatement::parse)
            .collect::<Result<Vec<_>, _>>()?;
        check_batch_len(statements.len())?;
        let ordered = fields.flag("ordered", true)?;
        let guard = ShardKeyGuard::parse(&fields)?;
        let mut result = BatchResult::default();
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        for (index, statement) in statements.iter().enumerate() {
            txn.begin_statement();
            let staged = stage_update(&mut txn, &ns, statement, guard.as_ref());
            if staged.is_err() {
                txn.rollback_statement();
            }
            match staged {
                Ok(outcome) => {
                    result.n += outcome.matched;
                    result.modified += outcome.modified;
                    if let Some(id) = outcome.upserted {
                        result
                            .upserted
                            .push(doc! {"index": count_i32(index as u64), "_id": id});
                    }
                }
                Err(err) => {
                    if result.fail(index, err, ordered)? {
                        break;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(result.into_reply(true))
    }

    /// `delete`.
    pub(crate) fn delete(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "delete")?.to_string();
        let fields = Fields::new(command, "delete");
        let items = fields
            .array("deletes")?
            .ok_or_else(|| fields.missing("deletes"))?;
        let statements = documents(items, "delete.deletes")?
            .into_iter()
            .map(parse_delete)
            .collect::<Result<Vec<_>, _>>()?;
        check_batch_len(statements.len())?;
        let ordered = fields.flag("ordered", true)?;
        let mut result = BatchResult::default();
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        for (index, (query, just_one)) in statements.into_iter().enumerate() {
            // A multi-delete stopped half-way (a document under a migration's critical
            // section) takes back what it staged, so the router can retry it whole.
            txn.begin_statement();
            let staged = stage_delete(&mut txn, &ns, query, just_one);
            if staged.is_err() {
                txn.rollback_statement();
            }
            match staged {
                Ok(n) => result.n += n,
                Err(err) => {
                    if result.fail(index, err, ordered)? {
                        break;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(result.into_reply(false))
    }
}

fn stage_update(
    txn: &mut Txn<'_>,
    ns: &str,
    statement: &UpdateStatement<'_>,
    guard: Option<&ShardKeyGuard>,
) -> Result<UpdateOutcome, StmtError> {
    let filter = Filter::parse(statement.q)?;
    // The query goes with the update for positional `$` paths.
    let update = Update::parse(statement.u, statement.array_filters)?.with_query(filter.clone());
    if statement.multi && update.is_replacement() {
        return Err(StmtError::Write(CommandError::failed_to_parse(
            "multi update is not supported for replacement-style update",
        )));
    }
    let limit = if statement.multi { None } else { Some(1) };
    let entry = catalog::lookup(txn, ns)?;
    let matches = match &entry {
        Some(entry) => find_matching::<StmtError>(txn, entry, statement.q, &filter, limit)?,
        None => Vec::new(),
    };
    let Some(mut entry) = entry.filter(|_| !matches.is_empty()) else {
        if !statement.upsert {
            return Ok(UpdateOutcome {
                matched: 0,
                modified: 0,
                upserted: None,
            });
        }
        let (id, _) = stage_upsert(txn, ns, &update, statement.q, guard)?;
        return Ok(UpdateOutcome {
            matched: 1,
            modified: 0,
            upserted: Some(id),
        });
    };
    // Compute every new document before staging any, so an update that fails on the data
    // stages nothing; a unique index violation half-way is taken back by the caller's
    // statement rollback.
    let mut changed = Vec::new();
    for (key, old) in &matches {
        if let Some(prepared) = apply_update(&update, old, guard)? {
            changed.push((key.clone(), old, prepared));
        }
    }
    let modified = changed.len() as u64;
    for (key, old, prepared) in changed {
        index::stage_document(
            txn,
            &mut entry,
            key,
            Some(old),
            &prepared.document,
            prepared.bytes,
        )?;
    }
    Ok(UpdateOutcome {
        matched: matches.len() as u64,
        modified,
        upserted: None,
    })
}

/// Reads one `delete` statement: its filter and whether it deletes at most one document.
fn parse_delete(statement: &Document) -> Result<(&Document, bool), CommandError> {
    let fields = Fields::new(statement, "delete.deletes");
    let q = fields.doc("q")?.ok_or_else(|| fields.missing("q"))?;
    let limit = fields
        .i64("limit")?
        .ok_or_else(|| fields.missing("limit"))?;
    match limit {
        0 => Ok((q, false)),
        1 => Ok((q, true)),
        other => Err(CommandError::failed_to_parse(format!(
            "The limit field in delete objects must be 0 or 1. Got {other}"
        ))),
    }
}

fn stage_delete(
    txn: &mut Txn<'_>,
    ns: &str,
    query: &Document,
    just_one: bool,
) -> Result<u64, StmtError> {
    let filter = Filter::parse(query)?;
    let Some(mut entry) = catalog::lookup(txn, ns)? else {
        return Ok(0);
    };
    let limit = if just_one { Some(1) } else { None };
    let matches = find_matching::<StmtError>(txn, &entry, query, &filter, limit)?;
    let n = matches.len() as u64;
    for (key, old) in matches {
        index::unstage_document(txn, &mut entry, key, &old)?;
    }
    Ok(n)
}
