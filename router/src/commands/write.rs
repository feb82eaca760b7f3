//! Writes through the router: `insert` (split by owning shard, ordered runs in sequence or
//! unordered batches in parallel), `update` and `delete` (each statement targeted by its filter;
//! multi-document statements broadcast, single-document ones without the shard key tried shard
//! by shard), and `findAndModify`. Write errors carry the index of the statement in the client's
//! batch, whichever shard reported them.

use std::sync::{Arc, atomic::Ordering};

use bson::{Bson, Document, doc, oid::ObjectId};
use futures::future::join_all;
use shoal_common::{CommandError, ErrorCode, Namespace, ShardId};

use super::{
    Placement, Router, command_namespace, int_field, shard_command,
    stale::{
        StaleRetry, indexes_to_retry, is_stale, is_stale_write_error, retry_stale,
        with_shard_version,
    },
};
use crate::topology::RoutingCache;

/// The largest document a client may store (BSON bytes), as in MongoDB.
pub const DOCUMENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The outcome of one update or delete statement.
#[derive(Debug, Default)]
struct StatementOutcome {
    n: i64,
    n_modified: i64,
    upserted_id: Option<Bson>,
}

/// What one update or delete statement achieved on the shards that ran it, kept across
/// StaleConfig retries so that no shard runs a statement twice.
#[derive(Debug, Default)]
struct StatementProgress {
    /// The shards that ran the statement.
    executed: Vec<ShardId>,
    /// Their outcomes, summed.
    outcome: StatementOutcome,
}

impl StatementProgress {
    /// Adds a shard's outcome.
    fn record(&mut self, shard: &ShardId, outcome: StatementOutcome) {
        self.executed.push(shard.clone());
        self.outcome.n += outcome.n;
        self.outcome.n_modified += outcome.n_modified;
        self.outcome.upserted_id = self.outcome.upserted_id.take().or(outcome.upserted_id);
    }

    /// The targets that have not run the statement: a shard that accepted the version ran it
    /// on every range it owned, and sending it again would apply it twice there. (A migration
    /// that moves already-updated documents between two attempts can still make a retried
    /// multi-document statement see them again, as in MongoDB without
    /// `pauseMigrationsDuringMultiUpdates`.)
    fn not_executed(&self, targets: Vec<ShardId>) -> Vec<ShardId> {
        targets
            .into_iter()
            .filter(|shard| !self.executed.contains(shard))
            .collect()
    }
}

/// The facts of an update or delete command shared by its statements.
struct StatementBatch<'a> {
    ns: &'a Namespace,
    command: &'a Document,
    kind: StatementKind,
    /// Whether any statement upserts (only then may the database be created).
    any_upsert: bool,
}

/// One statement as it is sent to its shards.
struct StatementSend<'a> {
    ns: &'a Namespace,
    /// The request without its shard version (added per shard).
    request: Document,
    /// The snapshot the statement was targeted by.
    routing: &'a RoutingCache,
    /// The collection, when a shard-key change moves the document instead of failing.
    mover: Option<&'a crate::topology::CollectionRouting>,
    statement: &'a Document,
    filter: &'a Document,
}

/// A batch of documents for one shard, each with its index in the client's batch.
type Run = (ShardId, Vec<(usize, Document)>);

/// Errors found at the router or reported by shards, by client batch index.
type IndexedErrors = Vec<(usize, Document)>;

impl Router {
    pub(super) async fn insert(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, "insert")?;
        if is_settings(&ns) {
            return self.settings_write(&ns, command).await;
        }
        let documents = match command.get("documents") {
            Some(Bson::Array(documents)) => documents,
            Some(other) => return Err(CommandError::type_mismatch("documents", "array", other)),
            None => return Err(CommandError::missing_field("insert", "documents")),
        };
        let ordered = ordered_flag(command)?;
        check_batch_size(documents.len())?;
        self.counters
            .insert
            .fetch_add(documents.len() as u64, Ordering::Relaxed);
        let (mut pending, mut errors) = prepare_documents(documents, ordered);
        let mut n = 0;
        let mut retry = StaleRetry::default();
        // Each attempt routes the documents not yet inserted by a fresh snapshot; a shard that
        // refused the version inserted none of what it was sent.
        while !pending.is_empty() {
            let (placement, routing) = self.placement_for_write(&ns).await?;
            let (inserted, attempt_errors) = self
                .insert_attempt(&ns, command, &pending, ordered, &placement, &routing)
                .await;
            n += inserted;
            let (stale, standing): (IndexedErrors, IndexedErrors) = attempt_errors
                .into_iter()
                .partition(|(_, entry)| is_stale_write_error(entry));
            errors.extend(standing);
            let Some((_, first_stale)) = stale.first() else {
                break;
            };
            if !retry
                .after(&self.cluster, &ns, &error_from_write_error(first_stale))
                .await
            {
                errors.extend(stale);
                break;
            }
            pending = pending_after_stale(pending, &stale, ordered);
        }
        if ordered {
            // Only the first error of an ordered batch stands: nothing after it ran.
            errors.sort_by_key(|(index, _)| *index);
            errors.truncate(1);
        }
        Ok(write_reply(n, None, Vec::new(), errors))
    }

    /// Routes `pending` by one snapshot and sends each shard its documents; returns how many
    /// were inserted and the errors, by client batch index.
    async fn insert_attempt(
        &self,
        ns: &Namespace,
        command: &Document,
        pending: &[(usize, Document)],
        ordered: bool,
        placement: &Placement,
        routing: &RoutingCache,
    ) -> (i64, IndexedErrors) {
        let mut runs: Vec<Run> = Vec::new();
        let mut errors: IndexedErrors = Vec::new();
        for (index, doc) in pending {
            match target_of(placement, doc) {
                Ok(shard) => push_to_run(&mut runs, shard, *index, doc.clone(), ordered),
                Err(error) => {
                    errors.push((*index, write_error(*index, &error)));
                    if ordered {
                        break;
                    }
                }
            }
        }
        let (n, shard_errors) = if ordered {
            self.insert_ordered(ns, command, runs, routing).await
        } else {
            self.insert_unordered(ns, command, runs, routing).await
        };
        errors.extend(shard_errors);
        (n, errors)
    }

    async fn insert_ordered(
        &self,
        ns: &Namespace,
        command: &Document,
        runs: Vec<Run>,
        routing: &RoutingCache,
    ) -> (i64, IndexedErrors) {
        let mut inserted = 0;
        for (shard, docs) in runs {
            let (n, errors) = self
                .send_inserts(ns, command, &shard, docs, true, routing)
                .await;
            inserted += n;
            if !errors.is_empty() {
                return (inserted, errors);
            }
        }
        (inserted, Vec::new())
    }

    async fn insert_unordered(
        &self,
        ns: &Namespace,
        command: &Document,
        runs: Vec<Run>,
        routing: &RoutingCache,
    ) -> (i64, IndexedErrors) {
        let sends = runs.into_iter().map(|(shard, docs)| async move {
            self.send_inserts(ns, command, &shard, docs, false, routing)
                .await
        });
        let mut inserted = 0;
        let mut errors = Vec::new();
        for (n, shard_errors) in join_all(sends).await {
            inserted += n;
            errors.extend(shard_errors);
        }
        errors.sort_by_key(|(index, _)| *index);
        (inserted, errors)
    }

    /// Sends one shard its documents; returns how many it inserted and its errors re-indexed to
    /// the client's batch.
    async fn send_inserts(
        &self,
        ns: &Namespace,
        command: &Document,
        shard: &ShardId,
        docs: Vec<(usize, Document)>,
        ordered: bool,
        routing: &RoutingCache,
    ) -> (i64, IndexedErrors) {
        let indexes: Vec<usize> = docs.iter().map(|(index, _)| *index).collect();
        let mut request = shard_command(command);
        request.insert(
            "documents",
            docs.into_iter()
                .map(|(_, doc)| Bson::Document(doc))
                .collect::<Vec<_>>(),
        );
        request.insert("ordered", ordered);
        request.insert(
            "stmtIds",
            indexes
                .iter()
                .map(|index| Bson::Int32(clamp_i32(*index as i64)))
                .collect::<Vec<_>>(),
        );
        let request = with_shard_version(request, routing.shard_version(ns, shard));
        let reply = match routing.shard_host(shard) {
            Ok(host) => self.cluster.call_ok(host, &ns.db, request).await,
            Err(error) => Err(error),
        };
        match reply {
            Ok(reply) => (reply_n(&reply), reindex_write_errors(&reply, &indexes)),
            Err(error) => {
                // The whole sub-batch failed: an ordered batch stops at its first document, an
                // unordered one reports every document.
                let failed = if ordered {
                    &indexes[..indexes.len().min(1)]
                } else {
                    &indexes[..]
                };
                (
                    0,
                    failed
                        .iter()
                        .map(|index| (*index, write_error(*index, &error)))
                        .collect(),
                )
            }
        }
    }

    /// A write to `config.settings` (cluster settings such as `chunksize`): the whole command
    /// goes to the config server, which stores the collection.
    async fn settings_write(
        &self,
        ns: &Namespace,
        command: &Document,
    ) -> Result<Document, CommandError> {
        self.cluster
            .call_config(&ns.db, shard_command(command))
            .await
    }

    pub(super) async fn update(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        self.statements(db, command, StatementKind::Update).await
    }

    pub(super) async fn delete(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        self.statements(db, command, StatementKind::Delete).await
    }

    async fn statements(
        &self,
        db: &str,
        command: &Document,
        kind: StatementKind,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, kind.command())?;
        if is_settings(&ns) {
            return self.settings_write(&ns, command).await;
        }
        let statements = kind.statements_of(command)?;
        let ordered = ordered_flag(command)?;
        check_batch_size(statements.len())?;
        let mut any_upsert = false;
        for statement in statements.iter().filter_map(Bson::as_document) {
            // A malformed `limit` or `multi` fails the whole command, as in MongoDB.
            kind.touches_all(statement)?;
            any_upsert |= matches!(statement.get("upsert"), Some(Bson::Boolean(true)));
        }
        let counter = match kind {
            StatementKind::Update => &self.counters.update,
            StatementKind::Delete => &self.counters.delete,
        };
        counter.fetch_add(statements.len() as u64, Ordering::Relaxed);
        let batch = StatementBatch {
            ns: &ns,
            command,
            kind,
            any_upsert,
        };
        let mut snapshot = self.statement_placement(&batch).await?;
        if matches!(snapshot.0, Placement::Missing) {
            let n_modified = matches!(kind, StatementKind::Update).then_some(0);
            return Ok(write_reply(0, n_modified, Vec::new(), Vec::new()));
        }
        let (mut n, mut n_modified) = (0, 0);
        let mut upserted = Vec::new();
        let mut errors = Vec::new();
        let mut retry = StaleRetry::default();
        for (index, statement) in statements.iter().enumerate() {
            let outcome = match statement {
                Bson::Document(statement) => {
                    self.statement_retrying(&batch, index, statement, &mut snapshot, &mut retry)
                        .await
                }
                other => Err(CommandError::type_mismatch(
                    kind.array_field(),
                    "object",
                    other,
                )),
            };
            match outcome {
                Ok(outcome) => {
                    n += outcome.n;
                    n_modified += outcome.n_modified;
                    if let Some(id) = outcome.upserted_id {
                        upserted.push(doc! {"index": index as i32, "_id": id});
                    }
                }
                Err(error) => {
                    errors.push((index, write_error(index, &error)));
                    if ordered {
                        break;
                    }
                }
            }
        }
        let n_modified = matches!(kind, StatementKind::Update).then_some(n_modified);
        Ok(write_reply(n, n_modified, upserted, errors))
    }

    /// The placement an update or delete batch is routed by. Only an upsert may create the
    /// database; matching nothing must not.
    async fn statement_placement(
        &self,
        batch: &StatementBatch<'_>,
    ) -> Result<(Placement, Arc<RoutingCache>), CommandError> {
        if batch.any_upsert {
            self.placement_for_write(batch.ns).await
        } else {
            self.placement_for_read_of_write(batch.ns).await
        }
    }

    /// Runs one statement, retrying after StaleConfig refusals on the shards that did not run
    /// it (by a fresh snapshot, which then routes the rest of the batch too).
    async fn statement_retrying(
        &self,
        batch: &StatementBatch<'_>,
        index: usize,
        statement: &Document,
        snapshot: &mut (Placement, Arc<RoutingCache>),
        retry: &mut StaleRetry,
    ) -> Result<StatementOutcome, CommandError> {
        let mut progress = StatementProgress::default();
        loop {
            let (placement, routing) = &*snapshot;
            if matches!(placement, Placement::Missing) {
                // The database was dropped meanwhile: nothing is left to match.
                return Ok(progress.outcome);
            }
            let result = self
                .statement(batch, index, statement, (placement, routing), &mut progress)
                .await;
            match result {
                Ok(()) => return Ok(progress.outcome),
                Err(error) if retry.after(&self.cluster, batch.ns, &error).await => {
                    *snapshot = self.statement_placement(batch).await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Runs one update or delete statement on the shards it targets that have not run it yet,
    /// recording in `progress` what each shard did.
    async fn statement(
        &self,
        batch: &StatementBatch<'_>,
        index: usize,
        statement: &Document,
        (placement, routing): (&Placement, &RoutingCache),
        progress: &mut StatementProgress,
    ) -> Result<(), CommandError> {
        let kind = batch.kind;
        let filter = match statement.get("q") {
            Some(Bson::Document(filter)) => filter.clone(),
            Some(other) => return Err(CommandError::type_mismatch("q", "object", other)),
            None => {
                return Err(CommandError::bad_value(format!(
                    "{} statement without 'q'",
                    kind.command()
                )));
            }
        };
        let all_documents = kind.touches_all(statement)?;
        let upsert = matches!(statement.get("upsert"), Some(Bson::Boolean(true)));
        let (shards, key_fields) = write_targets(placement, &filter, upsert)?;
        let shards = progress.not_executed(shards);
        let mut request = shard_command(batch.command);
        request.insert(kind.array_field(), vec![Bson::Document(statement.clone())]);
        request.insert("ordered", true);
        // Each request of a retryable write names its statements: a shard records executed
        // statements per (session, txnNumber, first statement id), so two requests of one
        // client command to the same shard must not look like a retry of each other.
        request.insert("stmtIds", vec![clamp_i32(index as i64)]);
        if let StatementKind::Update = kind {
            request.extend(key_fields);
        }
        let mover = match placement {
            Placement::Sharded(collection)
                if !all_documents && !upsert && batch.command.contains_key("txnNumber") =>
            {
                Some(collection)
            }
            _ => None,
        };
        let send = StatementSend {
            ns: batch.ns,
            request,
            routing,
            mover,
            statement,
            filter: &filter,
        };
        if all_documents || shards.len() == 1 {
            return self.send_to_all(&send, &shards, progress).await;
        }
        // One document, filter without the shard key: the first shard that matches takes it.
        for shard in &shards {
            let outcome = self.send_or_move(&send, shard).await?;
            let matched = outcome.n > 0;
            progress.record(shard, outcome);
            if matched {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sends a statement to every shard in parallel. The shards that ran it are recorded even
    /// when another refused it as stale (the refusal is returned after them).
    async fn send_to_all(
        &self,
        send: &StatementSend<'_>,
        shards: &[ShardId],
        progress: &mut StatementProgress,
    ) -> Result<(), CommandError> {
        let sends = shards
            .iter()
            .map(|shard| async move { (shard, self.send_or_move(send, shard).await) });
        let mut stale = None;
        for (shard, outcome) in join_all(sends).await {
            match outcome {
                Ok(outcome) => progress.record(shard, outcome),
                Err(error) if is_stale(&error) => stale = stale.or(Some(error)),
                Err(error) => return Err(error),
            }
        }
        stale.map_or(Ok(()), Err)
    }

    /// Sends one statement to one shard; when `send.mover` is given (a retryable single update
    /// of a sharded collection) and the shard refuses a shard-key change, moves the document
    /// instead.
    async fn send_or_move(
        &self,
        send: &StatementSend<'_>,
        shard: &ShardId,
    ) -> Result<StatementOutcome, CommandError> {
        let outcome = self
            .send_statement(send.ns, shard, send.request.clone(), send.routing)
            .await;
        match (outcome, send.mover) {
            (Err(error), Some(collection)) if error.is_shard_key_change() => {
                self.move_statement(
                    send.ns,
                    shard,
                    send.statement,
                    send.filter,
                    collection,
                    send.routing,
                )
                .await
            }
            (outcome, _) => outcome,
        }
    }

    /// A retryable single update that changes the shard key: move the document (see
    /// `key_move`).
    async fn move_statement(
        &self,
        ns: &Namespace,
        donor: &ShardId,
        statement: &Document,
        filter: &Document,
        collection: &crate::topology::CollectionRouting,
        routing: &RoutingCache,
    ) -> Result<StatementOutcome, CommandError> {
        let update = statement.get("u").cloned().unwrap_or(Bson::Null);
        let array_filters = statement.get_array("arrayFilters").ok().map(Vec::as_slice);
        let change = super::key_move::KeyChange {
            filter,
            sort: None,
            update: &update,
            array_filters,
        };
        let moved = super::key_move::move_for_key_change(
            &self.cluster,
            ns,
            donor,
            &change,
            collection,
            routing,
        )
        .await?;
        Ok(match moved {
            Some(_) => StatementOutcome {
                n: 1,
                n_modified: 1,
                upserted_id: None,
            },
            None => StatementOutcome::default(),
        })
    }

    async fn send_statement(
        &self,
        ns: &Namespace,
        shard: &ShardId,
        request: Document,
        routing: &RoutingCache,
    ) -> Result<StatementOutcome, CommandError> {
        let host = routing.shard_host(shard)?;
        let request_flags = ShardKeyChangeContext::of(&request);
        let request = with_shard_version(request, routing.shard_version(ns, shard));
        let reply = self.cluster.call_ok(host, &ns.db, request).await?;
        let first_error = reply
            .get_array("writeErrors")
            .ok()
            .and_then(|errors| errors.first());
        if let Some(Bson::Document(first)) = first_error {
            return Err(shard_key_change_error(
                error_from_write_error(first),
                &request_flags,
            ));
        }
        let upserted_id = reply
            .get_array("upserted")
            .ok()
            .and_then(|list| list.first())
            .and_then(Bson::as_document)
            .and_then(|entry| entry.get("_id").cloned());
        Ok(StatementOutcome {
            n: reply_n(&reply),
            n_modified: int_field(&reply, "nModified"),
            upserted_id,
        })
    }

    pub(super) async fn find_and_modify(
        &self,
        db: &str,
        name: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, name)?;
        self.counters.update.fetch_add(1, Ordering::Relaxed);
        // An attempt modifies a document only in its last step, so a refused attempt changed
        // nothing and is retried whole.
        retry_stale(&self.cluster, &ns, || {
            self.find_and_modify_once(&ns, command)
        })
        .await
    }

    /// One attempt of a findAndModify, routed by one snapshot.
    async fn find_and_modify_once(
        &self,
        ns: &Namespace,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let upsert = matches!(command.get("upsert"), Some(Bson::Boolean(true)));
        let (placement, routing) = if upsert {
            self.placement_for_write(ns).await?
        } else {
            self.placement_for_read_of_write(ns).await?
        };
        let mut request = shard_command(command);
        match &placement {
            Placement::Sharded(_) => {}
            Placement::Missing => return Ok(find_and_modify_no_match()),
            other => {
                let host = self
                    .unsharded_host(other, &routing)?
                    .ok_or_else(|| CommandError::internal("no host"))?;
                return self.cluster.call(&host, &ns.db, request).await;
            }
        }
        let filter = match command.get("query") {
            Some(Bson::Document(filter)) => filter.clone(),
            None | Some(Bson::Null) => Document::new(),
            Some(other) => return Err(CommandError::type_mismatch("query", "object", other)),
        };
        let (shards, key_fields) = write_targets(&placement, &filter, upsert)?;
        request.extend(key_fields);
        let sort = match command.get("sort") {
            Some(Bson::Document(sort)) if !sort.is_empty() && shards.len() > 1 => {
                Some(sort.clone())
            }
            _ => None,
        };
        let Some(sort) = sort else {
            let result = self
                .find_and_modify_first_match(ns, &shards, request, &routing)
                .await;
            return match (result, &placement) {
                (Err(error), Placement::Sharded(collection))
                    if error.is_shard_key_change()
                        && command.contains_key("txnNumber")
                        && !upsert =>
                {
                    self.find_and_modify_move(ns, command, &filter, &shards, collection, &routing)
                        .await
                }
                (result, _) => result,
            };
        };
        let mover = match &placement {
            Placement::Sharded(collection) if command.contains_key("txnNumber") && !upsert => {
                Some((command, collection))
            }
            _ => None,
        };
        self.find_and_modify_sorted(ns, &shards, &filter, &sort, request, &routing, mover)
            .await
    }

    /// A retryable findAndModify that changes the shard key: move the document (see
    /// `key_move`) and answer as findAndModify would have.
    async fn find_and_modify_move(
        &self,
        ns: &Namespace,
        command: &Document,
        filter: &Document,
        shards: &[ShardId],
        collection: &crate::topology::CollectionRouting,
        routing: &RoutingCache,
    ) -> Result<Document, CommandError> {
        let update = command.get("update").cloned().unwrap_or(Bson::Null);
        let array_filters = command.get_array("arrayFilters").ok().map(Vec::as_slice);
        let sort = command.get_document("sort").ok();
        let change = super::key_move::KeyChange {
            filter,
            sort,
            update: &update,
            array_filters,
        };
        for shard in shards {
            let moved = super::key_move::move_for_key_change(
                &self.cluster,
                ns,
                shard,
                &change,
                collection,
                routing,
            )
            .await?;
            let Some(moved) = moved else { continue };
            let returns_new = matches!(command.get("new"), Some(Bson::Boolean(true)));
            let value = if returns_new { moved.post } else { moved.pre };
            let value = match command.get_document("fields") {
                Ok(fields) => shoal_query::Projection::parse(fields)
                    .and_then(|projection| projection.apply(&value))
                    .map_err(CommandError::from)?,
                Err(_) => value,
            };
            return Ok(
                doc! {"lastErrorObject": {"n": 1, "updatedExisting": true}, "value": value, "ok": 1.0},
            );
        }
        Ok(find_and_modify_no_match())
    }

    /// Without a sort, any matching document will do: the first shard with one takes it.
    async fn find_and_modify_first_match(
        &self,
        ns: &Namespace,
        shards: &[ShardId],
        request: Document,
        routing: &RoutingCache,
    ) -> Result<Document, CommandError> {
        let mut last_reply = None;
        for shard in shards {
            let host = routing.shard_host(shard)?;
            let versioned = with_shard_version(request.clone(), routing.shard_version(ns, shard));
            let reply = self.cluster.call_ok(host, &ns.db, versioned).await?;
            if find_and_modify_matched(&reply) {
                return Ok(reply);
            }
            last_reply = Some(reply);
        }
        Ok(last_reply.unwrap_or_else(find_and_modify_no_match))
    }

    /// With a sort across shards, the document to modify is the first in sort order over all
    /// shards: find each shard's first, pick the winner, then modify it by `_id` on its shard.
    /// If it changed in between, start again (bounded).
    #[allow(clippy::too_many_arguments)] // reason: every argument is one of the command's facts.
    async fn find_and_modify_sorted(
        &self,
        ns: &Namespace,
        shards: &[ShardId],
        filter: &Document,
        sort: &Document,
        request: Document,
        routing: &RoutingCache,
        mover: Option<(&Document, &crate::topology::CollectionRouting)>,
    ) -> Result<Document, CommandError> {
        let sort_spec = shoal_query::SortSpec::parse(sort).map_err(CommandError::from)?;
        for _ in 0..FIND_AND_MODIFY_ATTEMPTS_MAX {
            let probe = doc! {"find": ns.coll.clone(), "filter": filter.clone(), "sort": sort.clone(), "limit": 1, "singleBatch": true};
            let probes = shards.iter().map(|shard| async {
                let host = routing.shard_host(shard)?;
                let versioned = with_shard_version(probe.clone(), routing.shard_version(ns, shard));
                let reply = self.cluster.call_ok(host, &ns.db, versioned).await?;
                let (_, _, mut batch) = crate::cursors::parse_cursor(&reply, "firstBatch")?;
                Ok::<_, CommandError>(batch.pop_front().map(|doc| (shard.clone(), doc)))
            });
            let mut winner: Option<(ShardId, Document)> = None;
            for candidate in join_all(probes).await {
                let Some((shard, doc)) = candidate? else {
                    continue;
                };
                let better = match &winner {
                    Some((_, best)) => sort_spec.compare(&doc, best).is_lt(),
                    None => true,
                };
                if better {
                    winner = Some((shard, doc));
                }
            }
            let Some((shard, doc)) = winner else {
                return Ok(find_and_modify_no_match());
            };
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            let mut pinned = request.clone();
            pinned.insert("query", doc! {"$and": [filter.clone(), {"_id": id}]});
            let pinned_query = pinned.get_document("query").cloned().unwrap_or_default();
            let pinned = with_shard_version(pinned, routing.shard_version(ns, &shard));
            let reply = match self
                .cluster
                .call_ok(routing.shard_host(&shard)?, &ns.db, pinned)
                .await
            {
                Err(error) if error.is_shard_key_change() && mover.is_some() => {
                    let Some((command, collection)) = mover else {
                        return Err(error);
                    };
                    // The selected document changes its key: move it (a retryable write).
                    return self
                        .find_and_modify_move(
                            ns,
                            command,
                            &pinned_query,
                            std::slice::from_ref(&shard),
                            collection,
                            routing,
                        )
                        .await;
                }
                reply => reply?,
            };
            if find_and_modify_matched(&reply) {
                return Ok(reply);
            }
        }
        Err(CommandError::new(
            ErrorCode(112),
            "findAndModify kept racing with concurrent writes to the documents it selected",
        ))
    }
}

/// What decides MongoDB's answer to an update that would change a document's shard key.
struct ShardKeyChangeContext {
    multi: bool,
    retryable: bool,
}

impl ShardKeyChangeContext {
    fn of(request: &Document) -> ShardKeyChangeContext {
        let multi = request
            .get_array("updates")
            .ok()
            .and_then(|updates| updates.first())
            .and_then(Bson::as_document)
            .is_some_and(|update| matches!(update.get("multi"), Some(Bson::Boolean(true))));
        ShardKeyChangeContext {
            multi,
            retryable: request.contains_key("txnNumber"),
        }
    }
}

/// The shard refuses a shard-key change with ImmutableField; MongoDB answers a multi update with
/// InvalidOptions and a single update outside a retryable write with IllegalOperation. Inside a
/// retryable write MongoDB would move the document, which needs a cross-shard atomic write Shoal
/// does not have yet, so that case keeps the shard's ImmutableField.
fn shard_key_change_error(error: CommandError, context: &ShardKeyChangeContext) -> CommandError {
    if !error.is_shard_key_change() {
        return error;
    }
    if context.multi {
        return CommandError::new(
            ErrorCode::INVALID_OPTIONS,
            format!(
                "Multi-update operations require all documents to have the same shard key; {}",
                error.errmsg
            ),
        );
    }
    if !context.retryable {
        return CommandError::new(
            ErrorCode::ILLEGAL_OPERATION,
            format!(
                "Must run update to shard key field in a multi-statement transaction or with retryWrites: true; {}",
                error.errmsg
            ),
        );
    }
    error
}

/// How often a sorted findAndModify across shards re-selects its document after a race.
const FIND_AND_MODIFY_ATTEMPTS_MAX: usize = 5;

fn find_and_modify_matched(reply: &Document) -> bool {
    reply
        .get_document("lastErrorObject")
        .map(|leo| int_field(leo, "n") > 0)
        .unwrap_or(false)
}

fn find_and_modify_no_match() -> Document {
    doc! {"lastErrorObject": {"n": 0, "updatedExisting": false}, "value": Bson::Null, "ok": 1.0}
}

/// The shards a write with `filter` reaches, and the fields that let the shard enforce the
/// shard key: `shardKeyPattern` (the shard refuses an update that changes a document's key) and,
/// for an upsert, `upsertShardKey` (the key the router routed the new document by). An upsert
/// into a sharded collection must pin the whole shard key, as in MongoDB.
fn write_targets(
    placement: &Placement,
    filter: &Document,
    upsert: bool,
) -> Result<(Vec<ShardId>, Document), CommandError> {
    match placement {
        Placement::Unsharded(shard) => Ok((vec![shard.clone()], Document::new())),
        Placement::Sharded(collection) => {
            let keys = collection
                .map
                .equality_keys(filter)
                .filter(|keys| keys.len() == 1);
            let mut key_fields = doc! {"shardKeyPattern": collection.map.key.to_document()};
            match (upsert, keys) {
                (true, Some(mut keys)) => {
                    let key = keys.remove(0);
                    let shard = collection.map.chunk_for_key(&key).shard.clone();
                    key_fields.insert("upsertShardKey", key);
                    Ok((vec![shard], key_fields))
                }
                (true, None) => Err(CommandError::new(
                    ErrorCode::SHARD_KEY_NOT_FOUND,
                    format!(
                        "Failed to target upsert by query :: could not extract exact shard key from {filter}"
                    ),
                )),
                (false, _) => {
                    let shoal_common::chunks::Targeting::Shards(shards) =
                        collection.map.target_filter(filter);
                    Ok((shards, key_fields))
                }
            }
        }
        Placement::Config | Placement::Missing => Err(CommandError::internal(
            "write statement without a placement",
        )),
    }
}

/// Write batches hold 1 to 100,000 statements, as in MongoDB.
fn check_batch_size(len: usize) -> Result<(), CommandError> {
    const WRITE_BATCH_STATEMENTS_MAX: usize = 100_000;
    if len == 0 || len > WRITE_BATCH_STATEMENTS_MAX {
        return Err(CommandError::new(
            ErrorCode::INVALID_LENGTH,
            format!(
                "Write batch sizes must be between 1 and {WRITE_BATCH_STATEMENTS_MAX}. Got {len} operations."
            ),
        ));
    }
    Ok(())
}

/// Update or delete: the two statement-batch commands differ only in their field names and in
/// what makes a statement touch every matching document.
#[derive(Clone, Copy, Debug)]
enum StatementKind {
    Update,
    Delete,
}

impl StatementKind {
    fn command(self) -> &'static str {
        match self {
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
        }
    }

    fn array_field(self) -> &'static str {
        match self {
            StatementKind::Update => "updates",
            StatementKind::Delete => "deletes",
        }
    }

    /// The command's statement array (`updates` or `deletes`).
    fn statements_of(self, command: &Document) -> Result<&Vec<Bson>, CommandError> {
        match command.get(self.array_field()) {
            Some(Bson::Array(statements)) => Ok(statements),
            Some(other) => Err(CommandError::type_mismatch(
                self.array_field(),
                "array",
                other,
            )),
            None => Err(CommandError::missing_field(
                self.command(),
                self.array_field(),
            )),
        }
    }

    fn touches_all(self, statement: &Document) -> Result<bool, CommandError> {
        match self {
            StatementKind::Update => match statement.get("multi") {
                None | Some(Bson::Null) => Ok(false),
                Some(Bson::Boolean(multi)) => Ok(*multi),
                Some(other) => Err(CommandError::type_mismatch("multi", "bool", other)),
            },
            StatementKind::Delete => match statement.get("limit") {
                Some(Bson::Int32(0)) | Some(Bson::Int64(0)) => Ok(true),
                Some(Bson::Double(v)) if *v == 0.0 => Ok(true),
                Some(Bson::Int32(1)) | Some(Bson::Int64(1)) => Ok(false),
                Some(Bson::Double(v)) if *v == 1.0 => Ok(false),
                Some(other) => Err(CommandError::failed_to_parse(format!(
                    "The limit field in delete objects must be 0 or 1. Got {other}"
                ))),
                None => Err(CommandError::bad_value("delete statement without 'limit'")),
            },
        }
    }
}

fn ordered_flag(command: &Document) -> Result<bool, CommandError> {
    match command.get("ordered") {
        None | Some(Bson::Null) => Ok(true),
        Some(Bson::Boolean(ordered)) => Ok(*ordered),
        Some(other) => Err(CommandError::type_mismatch("ordered", "bool", other)),
    }
}

/// Prepares every document of an insert batch once (so a retried document keeps its `_id`):
/// the documents to send and the errors of those refused; an ordered batch stops at its first
/// refused document.
fn prepare_documents(documents: &[Bson], ordered: bool) -> (Vec<(usize, Document)>, IndexedErrors) {
    let mut prepared = Vec::with_capacity(documents.len());
    let mut errors = Vec::new();
    for (index, value) in documents.iter().enumerate() {
        match prepare_document(value) {
            Ok(doc) => prepared.push((index, doc)),
            Err(error) => {
                errors.push((index, write_error(index, &error)));
                if ordered {
                    break;
                }
            }
        }
    }
    (prepared, errors)
}

/// The documents of `pending` to send again after the statements of `stale` were refused.
fn pending_after_stale(
    pending: Vec<(usize, Document)>,
    stale: &IndexedErrors,
    ordered: bool,
) -> Vec<(usize, Document)> {
    let pending_indexes: Vec<usize> = pending.iter().map(|(index, _)| *index).collect();
    let stale_indexes: Vec<usize> = stale.iter().map(|(index, _)| *index).collect();
    let retry: std::collections::HashSet<usize> =
        indexes_to_retry(&pending_indexes, &stale_indexes, ordered)
            .into_iter()
            .collect();
    pending
        .into_iter()
        .filter(|(index, _)| retry.contains(index))
        .collect()
}

/// Checks a document for insertion and gives it an `_id` (first) if it has none, so that the
/// router routes it by the same `_id` the shard stores.
fn prepare_document(value: &Bson) -> Result<Document, CommandError> {
    let Bson::Document(doc) = value else {
        return Err(CommandError::type_mismatch("documents", "object", value));
    };
    let doc = if doc.contains_key("_id") {
        doc.clone()
    } else {
        let mut with_id = doc! {"_id": ObjectId::new()};
        with_id.extend(doc.clone());
        with_id
    };
    let bytes = crate::cursors::document_bytes(&doc);
    if bytes > DOCUMENT_BYTES_MAX {
        return Err(CommandError::new(
            ErrorCode::BSON_OBJECT_TOO_LARGE,
            format!(
                "object to insert too large. size in bytes: {bytes}, max size: {DOCUMENT_BYTES_MAX}"
            ),
        ));
    }
    Ok(doc)
}

fn target_of(placement: &Placement, doc: &Document) -> Result<ShardId, CommandError> {
    match placement {
        Placement::Unsharded(shard) => Ok(shard.clone()),
        Placement::Sharded(collection) => {
            let key = collection.map.key.extract(doc)?;
            Ok(collection.map.chunk_for_key(&key).shard.clone())
        }
        Placement::Config | Placement::Missing => {
            Err(CommandError::internal("insert without a placement"))
        }
    }
}

/// Adds a document to the batches: ordered inserts keep runs of consecutive documents per
/// shard (so order is kept across shards); unordered ones keep one batch per shard.
fn push_to_run(runs: &mut Vec<Run>, shard: ShardId, index: usize, doc: Document, ordered: bool) {
    let existing = if ordered {
        runs.last_mut()
            .filter(|(last_shard, _)| *last_shard == shard)
    } else {
        runs.iter_mut().find(|(run_shard, _)| *run_shard == shard)
    };
    match existing {
        Some((_, docs)) => docs.push((index, doc)),
        None => runs.push((shard, vec![(index, doc)])),
    }
}

fn write_error(index: usize, error: &CommandError) -> Document {
    let mut entry = doc! {
        "index": index as i32,
        "code": error.code.0,
        "codeName": error.code.name().into_owned(),
        "errmsg": error.errmsg.clone(),
    };
    for (key, value) in &error.extra {
        entry.insert(key.clone(), value.clone());
    }
    entry
}

fn error_from_write_error(entry: &Document) -> CommandError {
    let code = int_field(entry, "code");
    let mut error = CommandError::new(
        ErrorCode(i32::try_from(code).unwrap_or(ErrorCode::INTERNAL_ERROR.0)),
        entry.get_str("errmsg").unwrap_or("write error"),
    );
    for (key, value) in entry {
        if !matches!(key.as_str(), "index" | "code" | "codeName" | "errmsg") {
            error.extra.insert(key.clone(), value.clone());
        }
    }
    error
}

fn reindex_write_errors(reply: &Document, indexes: &[usize]) -> IndexedErrors {
    let mut errors = Vec::new();
    for entry in reply
        .get_array("writeErrors")
        .into_iter()
        .flatten()
        .filter_map(Bson::as_document)
    {
        let local = usize::try_from(int_field(entry, "index")).unwrap_or(0);
        let Some(&index) = indexes.get(local) else {
            continue;
        };
        let mut entry = entry.clone();
        entry.insert("index", index as i32);
        errors.push((index, entry));
    }
    errors
}

fn reply_n(reply: &Document) -> i64 {
    int_field(reply, "n")
}

fn write_reply(
    n: i64,
    n_modified: Option<i64>,
    upserted: Vec<Document>,
    errors: IndexedErrors,
) -> Document {
    let mut reply = doc! {"n": clamp_i32(n)};
    if let Some(n_modified) = n_modified {
        reply.insert("nModified", clamp_i32(n_modified));
    }
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    if !errors.is_empty() {
        reply.insert(
            "writeErrors",
            errors
                .into_iter()
                .map(|(_, e)| Bson::Document(e))
                .collect::<Vec<_>>(),
        );
    }
    reply.insert("ok", 1.0);
    reply
}

fn clamp_i32(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Whether `ns` is `config.settings`, the one internal collection clients write.
fn is_settings(ns: &Namespace) -> bool {
    ns.db == "config" && ns.coll == "settings"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_runs_keep_order_and_unordered_batches_group() {
        let a = ShardId::new("a").unwrap();
        let b = ShardId::new("b").unwrap();
        let mut ordered = Vec::new();
        let mut unordered = Vec::new();
        for (index, shard) in [&a, &a, &b, &a].into_iter().enumerate() {
            push_to_run(&mut ordered, shard.clone(), index, doc! {}, true);
            push_to_run(&mut unordered, shard.clone(), index, doc! {}, false);
        }
        assert_eq!(ordered.len(), 3);
        assert_eq!(unordered.len(), 2);
        assert_eq!(unordered[0].1.len(), 3);
    }

    #[test]
    fn prepared_documents_get_an_id_first_and_a_size_check() {
        let doc = prepare_document(&Bson::Document(doc! {"a": 1})).unwrap();
        assert_eq!(doc.keys().next().unwrap(), "_id");
        let big = "x".repeat(DOCUMENT_BYTES_MAX);
        let error = prepare_document(&Bson::Document(doc! {"a": big})).unwrap_err();
        assert_eq!(error.code, ErrorCode::BSON_OBJECT_TOO_LARGE);
        assert!(prepare_document(&Bson::Int32(1)).is_err());
    }

    #[test]
    fn write_errors_are_reindexed_to_the_client_batch() {
        let reply = doc! {"n": 1, "writeErrors": [{"index": 1, "code": 11000, "errmsg": "dup"}]};
        let errors = reindex_write_errors(&reply, &[4, 9]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 9);
        assert_eq!(errors[0].1.get_i32("index").unwrap(), 9);
    }

    #[test]
    fn retried_statements_skip_the_shards_that_ran_them() {
        let (a, b, c) = (
            ShardId::new("a").unwrap(),
            ShardId::new("b").unwrap(),
            ShardId::new("c").unwrap(),
        );
        let mut progress = StatementProgress::default();
        let ran = |n, upserted_id| StatementOutcome {
            n,
            n_modified: n,
            upserted_id,
        };
        progress.record(&a, ran(2, None));
        progress.record(&c, ran(1, Some(Bson::Int32(7))));
        progress.record(&c, ran(0, None));
        assert_eq!(progress.outcome.n, 3);
        assert_eq!(progress.outcome.n_modified, 3);
        assert_eq!(progress.outcome.upserted_id, Some(Bson::Int32(7)));
        let fresh_targets = vec![a.clone(), b.clone(), c.clone()];
        assert_eq!(progress.not_executed(fresh_targets), vec![b]);
    }

    #[test]
    fn refused_inserts_are_resent_by_batch_order() {
        let docs: Vec<Bson> = (0..5).map(|i| Bson::Document(doc! {"_id": i})).collect();
        let (pending, errors) = prepare_documents(&docs, true);
        assert_eq!(pending.len(), 5);
        assert!(errors.is_empty());
        let refused = |index: usize| (index, doc! {"index": index as i32, "code": 13388});
        let stale = vec![refused(3), refused(1)];
        let ordered: Vec<usize> = pending_after_stale(pending.clone(), &stale, true)
            .iter()
            .map(|(index, _)| *index)
            .collect();
        assert_eq!(ordered, [1, 2, 3, 4]);
        let unordered: Vec<usize> = pending_after_stale(pending.clone(), &stale, false)
            .iter()
            .map(|(index, _)| *index)
            .collect();
        assert_eq!(unordered, [1, 3]);
        // The retried documents keep the `_id` they were given once.
        let generated = prepare_documents(&[Bson::Document(doc! {"a": 1})], true).0;
        let again = pending_after_stale(generated.clone(), &vec![refused(0)], true);
        assert_eq!(again[0].1.get("_id"), generated[0].1.get("_id"));
    }

    #[test]
    fn an_ordered_insert_stops_preparing_at_its_first_bad_document() {
        let docs = [
            Bson::Document(doc! {"_id": 1}),
            Bson::Int32(2),
            Bson::Document(doc! {"_id": 3}),
        ];
        let (pending, errors) = prepare_documents(&docs, true);
        assert_eq!(pending.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 1);
        let (pending, errors) = prepare_documents(&docs, false);
        assert_eq!(pending.len(), 2);
        assert_eq!(errors.len(), 1);
    }
}
