//! Reads through the router: `find` with `getMore`/`killCursors`, `count`, `distinct` and
//! `aggregate`. A read that reaches one shard is passed through with all its options; a read
//! that reaches several gets shard requests without `skip` (and with `limit` raised by it), and
//! the router merges, skips, limits and, when a sort needs the sort keys, projects.

use std::sync::{Arc, atomic::Ordering};

use bson::{Bson, Document, doc};
use futures::future::join_all;
use shoal_common::{CommandError, ErrorCode, Namespace, bsonorder, chunks::Targeting};
use shoal_query::{Pipeline, Projection, SortSpec};

use super::{
    Placement, Router, command_namespace, count_field, document_field, int_field, integer_field,
    shard_command,
    stale::{ShardTarget, fail_if_stale, retry_stale},
};
use crate::{
    cursors::{Cursor, MergePlan, SHARD_GETMORE_DOCS, ShardStream, cursor_reply, drain},
    topology::RoutingCache,
};

/// The collections a pipeline's `$lookup` stages read, fetched by the router so it can run them
/// in the merging half of a sharded pipeline.
struct ForeignCollections(std::collections::HashMap<String, Vec<Document>>);

impl shoal_query::CollectionSource for ForeignCollections {
    fn collection_documents(&self, coll: &str) -> shoal_query::Result<Vec<Document>> {
        Ok(self.0.get(coll).cloned().unwrap_or_default())
    }
}

/// The first batch size when the client gives none, as in MongoDB.
pub const FIRST_BATCH_DOCS_DEFAULT: u64 = 101;
/// The most documents the router gathers for the merging half of a pipeline.
pub const AGGREGATE_MERGE_DOCS_MAX: usize = 5_000_000;

impl Router {
    /// The servers a read of `ns` with `filter` must reach, each with the shard version to
    /// send (from the same snapshot) when the collection is sharded.
    fn read_targets(
        &self,
        placement: &Placement,
        routing: &RoutingCache,
        filter: &Document,
    ) -> Result<Vec<ShardTarget>, CommandError> {
        match placement {
            Placement::Sharded(collection) => {
                let Targeting::Shards(shards) = collection.map.target_filter(filter);
                shards
                    .iter()
                    .map(|shard| {
                        Ok(ShardTarget {
                            host: routing.shard_host(shard)?.to_owned(),
                            version: Some(collection.map.shard_version(shard)),
                        })
                    })
                    .collect()
            }
            other => Ok(self
                .unsharded_host(other, routing)?
                .into_iter()
                .map(ShardTarget::unversioned)
                .collect()),
        }
    }

    /// Sends `request` to every target in parallel and opens a stream on each cursor reply.
    /// When any target fails, the cursors the others opened are killed.
    async fn open_streams(
        &self,
        db: &str,
        targets: &[ShardTarget],
        request: &Document,
    ) -> Result<Vec<ShardStream>, CommandError> {
        let calls = targets.iter().map(|target| async move {
            let (member, reply) = self
                .cluster
                .call_routed(&target.host, db, target.request(request))
                .await?;
            ShardStream::from_reply(&member, db, &reply)
        });
        let mut streams = Vec::with_capacity(targets.len());
        let mut first_error = None;
        for result in join_all(calls).await {
            match result {
                Ok(stream) => streams.push(stream),
                Err(error) => first_error = first_error.or(Some(error)),
            }
        }
        let Some(error) = first_error else {
            return Ok(streams);
        };
        // The cursors other shards opened would otherwise live until their idle timeout.
        let mut opened = Cursor::Merge {
            streams,
            plan: MergePlan::default(),
        };
        opened.kill(&self.cluster).await;
        Err(error)
    }

    /// Produces the first batch of `cursor` and registers it if it has more.
    pub(super) async fn first_batch(
        &self,
        ns: &str,
        mut cursor: Cursor,
        batch_docs: u64,
        single_batch: bool,
    ) -> Result<Document, CommandError> {
        let batch_docs = usize::try_from(batch_docs).unwrap_or(usize::MAX);
        let (batch, exhausted) = cursor.next_batch(&self.cluster, batch_docs).await?;
        if exhausted {
            return Ok(cursor_reply(0, ns, batch, true));
        }
        if single_batch {
            cursor.kill(&self.cluster).await;
            return Ok(cursor_reply(0, ns, batch, true));
        }
        let (id, evicted) = self.cursors.register(ns, cursor)?;
        for idle in evicted {
            let cluster = Arc::clone(&self.cluster);
            // Closing an idle cursor's shard cursors must not delay this client's reply.
            tokio::spawn(async move { idle.lock().await.kill(&cluster).await });
        }
        Ok(cursor_reply(id, ns, batch, true))
    }

    pub(super) async fn find(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, "find")?;
        self.counters.query.fetch_add(1, Ordering::Relaxed);
        retry_stale(&self.cluster, &ns, || self.find_once(db, &ns, command)).await
    }

    /// One attempt of a `find`, routed by one snapshot.
    async fn find_once(
        &self,
        db: &str,
        ns: &Namespace,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let filter = document_field(command, "filter")?
            .cloned()
            .unwrap_or_default();
        let sort = document_field(command, "sort")?
            .filter(|s| !s.is_empty())
            .cloned();
        let projection = document_field(command, "projection")?
            .filter(|p| !p.is_empty())
            .cloned();
        let skip = count_field(command, "skip")?.unwrap_or(0);
        let limit = count_field(command, "limit")?.filter(|l| *l > 0);
        let batch_docs = count_field(command, "batchSize")?.unwrap_or(FIRST_BATCH_DOCS_DEFAULT);
        let single_batch = matches!(command.get("singleBatch"), Some(Bson::Boolean(true)));
        let (placement, routing) = self.placement(ns).await?;
        let targets = self.read_targets(&placement, &routing, &filter)?;
        let ns_string = ns.to_string();
        if targets.is_empty() {
            return Ok(cursor_reply(0, &ns_string, Vec::new(), true));
        }
        let mut request = shard_command(command);
        let mut plan = MergePlan::default();
        if targets.len() > 1 {
            request.remove("skip");
            request.remove("singleBatch");
            if let Some(limit) = limit {
                request.insert("limit", i64::try_from(skip + limit).unwrap_or(i64::MAX));
            }
            if let Some(sort) = &sort {
                plan.sort = Some(SortSpec::parse(sort).map_err(CommandError::from)?);
                if let Some(projection) = &projection {
                    // Shards return whole documents so the merge can read the sort keys.
                    plan.projection =
                        Some(Projection::parse(projection).map_err(CommandError::from)?);
                    request.remove("projection");
                }
            }
            plan.skip = skip;
            plan.limit = limit;
        }
        let streams = self.open_streams(db, &targets, &request).await?;
        self.first_batch(
            &ns_string,
            Cursor::Merge { streams, plan },
            batch_docs,
            single_batch,
        )
        .await
    }

    pub(super) async fn get_more(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        self.counters.getmore.fetch_add(1, Ordering::Relaxed);
        let id = match command.get("getMore") {
            Some(Bson::Int64(id)) => *id,
            Some(Bson::Int32(id)) => i64::from(*id),
            Some(other) => return Err(CommandError::type_mismatch("getMore", "long", other)),
            None => return Err(CommandError::bad_value("getMore needs a cursor id")),
        };
        let collection = match command.get("collection") {
            Some(Bson::String(collection)) => collection,
            Some(other) => return Err(CommandError::type_mismatch("collection", "string", other)),
            None => return Err(CommandError::bad_value("getMore needs 'collection'")),
        };
        let ns = format!("{db}.{collection}");
        let batch_docs = count_field(command, "batchSize")?.filter(|b| *b > 0);
        let batch_docs = batch_docs
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
            .unwrap_or(usize::MAX);
        let cursor = self.cursors.get(id, &ns)?;
        let mut cursor = cursor.lock().await;
        let result = cursor.next_batch(&self.cluster, batch_docs).await;
        let (batch, exhausted) = match result {
            Ok(batch) => batch,
            Err(error) => {
                cursor.kill(&self.cluster).await;
                self.cursors.remove(id);
                return Err(error);
            }
        };
        if exhausted {
            self.cursors.remove(id);
            return Ok(cursor_reply(0, &ns, batch, false));
        }
        Ok(cursor_reply(id, &ns, batch, false))
    }

    pub(super) async fn kill_cursors(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let _ = command_namespace(db, command, "killCursors")?;
        let ids = match command.get("cursors") {
            Some(Bson::Array(ids)) => ids,
            Some(other) => return Err(CommandError::type_mismatch("cursors", "array", other)),
            None => return Err(CommandError::bad_value("killCursors needs 'cursors'")),
        };
        let (mut killed, mut not_found) = (Vec::new(), Vec::new());
        for id in ids {
            let Bson::Int64(id) = id else {
                return Err(CommandError::type_mismatch("cursors", "long", id));
            };
            match self.cursors.remove(*id) {
                Some(cursor) => {
                    cursor.lock().await.kill(&self.cluster).await;
                    killed.push(Bson::Int64(*id));
                }
                None => not_found.push(Bson::Int64(*id)),
            }
        }
        Ok(doc! {
            "cursorsKilled": killed, "cursorsNotFound": not_found,
            "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0,
        })
    }

    pub(super) async fn count(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, "count")?;
        self.counters.query.fetch_add(1, Ordering::Relaxed);
        retry_stale(&self.cluster, &ns, || self.count_once(db, &ns, command)).await
    }

    /// One attempt of a `count`, routed by one snapshot.
    async fn count_once(
        &self,
        db: &str,
        ns: &Namespace,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let filter = document_field(command, "query")?
            .cloned()
            .unwrap_or_default();
        let skip = count_field(command, "skip")?.unwrap_or(0);
        // `count` reads a negative limit as its absolute value.
        let limit = integer_field(command, "limit")?
            .map(i64::unsigned_abs)
            .filter(|l| *l > 0);
        let (placement, routing) = self.placement(ns).await?;
        let targets = self.read_targets(&placement, &routing, &filter)?;
        if let [target] = targets.as_slice() {
            return self.pass_through(db, target, &shard_command(command)).await;
        }
        let mut request = shard_command(command);
        request.remove("skip");
        if let Some(limit) = limit {
            request.insert("limit", i64::try_from(skip + limit).unwrap_or(i64::MAX));
        }
        let calls = targets.iter().map(|target| {
            self.cluster
                .call_ok(&target.host, db, target.request(&request))
        });
        let mut total: u64 = 0;
        for reply in join_all(calls).await {
            total += u64::try_from(int_field(&reply?, "n")).unwrap_or(0);
        }
        let mut n = total.saturating_sub(skip);
        if let Some(limit) = limit {
            n = n.min(limit);
        }
        Ok(doc! {"n": i64::try_from(n).unwrap_or(i64::MAX), "ok": 1.0})
    }

    pub(super) async fn distinct(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, "distinct")?;
        self.counters.query.fetch_add(1, Ordering::Relaxed);
        retry_stale(&self.cluster, &ns, || self.distinct_once(db, &ns, command)).await
    }

    /// One attempt of a `distinct`, routed by one snapshot.
    async fn distinct_once(
        &self,
        db: &str,
        ns: &Namespace,
        command: &Document,
    ) -> Result<Document, CommandError> {
        match command.get("key") {
            Some(Bson::String(_)) => {}
            Some(other) => return Err(CommandError::type_mismatch("key", "string", other)),
            None => return Err(CommandError::bad_value("distinct needs 'key'")),
        }
        let filter = document_field(command, "query")?
            .cloned()
            .unwrap_or_default();
        let (placement, routing) = self.placement(ns).await?;
        let targets = self.read_targets(&placement, &routing, &filter)?;
        if let [target] = targets.as_slice() {
            return self.pass_through(db, target, &shard_command(command)).await;
        }
        let request = shard_command(command);
        let calls = targets.iter().map(|target| {
            self.cluster
                .call_ok(&target.host, db, target.request(&request))
        });
        let mut values = Vec::new();
        for reply in join_all(calls).await {
            values.extend(reply?.get_array("values").cloned().unwrap_or_default());
        }
        values.sort_by(bsonorder::compare);
        values.dedup_by(|a, b| bsonorder::compare(a, b).is_eq());
        Ok(doc! {"values": values, "ok": 1.0})
    }

    pub(super) async fn aggregate(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        self.counters.command.fetch_add(1, Ordering::Relaxed);
        let pipeline = match command.get("pipeline") {
            Some(Bson::Array(pipeline)) => pipeline.clone(),
            Some(other) => return Err(CommandError::type_mismatch("pipeline", "array", other)),
            None => return Err(CommandError::bad_value("aggregate needs 'pipeline'")),
        };
        let cursor_options = match command.get("cursor") {
            Some(Bson::Document(cursor)) => cursor.clone(),
            Some(other) => return Err(CommandError::type_mismatch("cursor", "object", other)),
            None if command.contains_key("explain") => Document::new(),
            None => {
                return Err(CommandError::new(
                    ErrorCode::FAILED_TO_PARSE,
                    "The 'cursor' option is required, except for aggregate with the explain argument",
                ));
            }
        };
        let batch_docs =
            count_field(&cursor_options, "batchSize")?.unwrap_or(FIRST_BATCH_DOCS_DEFAULT);
        let ns = match command.get("aggregate") {
            Some(Bson::String(_)) => command_namespace(db, command, "aggregate")?,
            _ => {
                return Err(CommandError::new(
                    ErrorCode::COMMAND_NOT_SUPPORTED,
                    "database-level aggregation (aggregate: 1) is not available at the router yet",
                ));
            }
        };
        if matches!(command.get("explain"), Some(Bson::Boolean(true))) {
            return self.explain_command(db, command).await;
        }
        retry_stale(&self.cluster, &ns, || {
            self.aggregate_once(db, &ns, command, &pipeline, batch_docs)
        })
        .await
    }

    /// One attempt of an `aggregate`, routed by one snapshot.
    async fn aggregate_once(
        &self,
        db: &str,
        ns: &Namespace,
        command: &Document,
        pipeline: &[Bson],
        batch_docs: u64,
    ) -> Result<Document, CommandError> {
        let (placement, routing) = self.placement(ns).await?;
        let foreign = self.lookup_sources(ns, pipeline, &routing).await?;
        let ns_string = ns.to_string();
        let Placement::Sharded(_) = &placement else {
            let Some(host) = self.unsharded_host(&placement, &routing)? else {
                return Ok(cursor_reply(0, &ns_string, Vec::new(), true));
            };
            let streams = self
                .open_streams(
                    db,
                    &[ShardTarget::unversioned(host)],
                    &shard_command(command),
                )
                .await?;
            let cursor = Cursor::Merge {
                streams,
                plan: MergePlan::default(),
            };
            return self
                .first_batch(&ns_string, cursor, batch_docs, false)
                .await;
        };
        let (shard_stages, merge_stages) =
            Pipeline::split_for_shards(pipeline).map_err(CommandError::from)?;
        let leading_match = shard_stages
            .first()
            .and_then(|stage| stage.get_document("$match").ok())
            .cloned();
        let targets =
            self.read_targets(&placement, &routing, &leading_match.unwrap_or_default())?;
        let mut request = shard_command(command);
        request.insert(
            "pipeline",
            shard_stages
                .into_iter()
                .map(Bson::Document)
                .collect::<Vec<_>>(),
        );
        request.insert("cursor", doc! {"batchSize": SHARD_GETMORE_DOCS});
        let mut streams = self.open_streams(db, &targets, &request).await?;
        if merge_stages.is_empty() {
            let cursor = Cursor::Merge {
                streams,
                plan: MergePlan::default(),
            };
            return self
                .first_batch(&ns_string, cursor, batch_docs, false)
                .await;
        }
        let gathered = drain(&mut streams, &self.cluster, AGGREGATE_MERGE_DOCS_MAX).await?;
        let merge_stages: Vec<Bson> = merge_stages.into_iter().map(Bson::Document).collect();
        let source = ForeignCollections(foreign);
        let merged = Pipeline::parse(&merge_stages)
            .and_then(|p| p.run_with_source(gathered, &source))
            .map_err(CommandError::from)?;
        self.first_batch(
            &ns_string,
            Cursor::Buffered(merged.into()),
            batch_docs,
            false,
        )
        .await
    }

    /// Sends a read to its only target and hands the reply back as it is (errors included),
    /// unless the shard refused the routing version.
    async fn pass_through(
        &self,
        db: &str,
        target: &ShardTarget,
        request: &Document,
    ) -> Result<Document, CommandError> {
        let reply = self
            .cluster
            .call(&target.host, db, target.request(request))
            .await?;
        fail_if_stale(reply)
    }

    /// Checks the collections `$lookup` reads (they must not be sharded: each shard would see
    /// only its part) and, when `ns` is sharded so the join runs at the router, fetches them.
    async fn lookup_sources(
        &self,
        ns: &Namespace,
        pipeline: &[Bson],
        routing: &RoutingCache,
    ) -> Result<std::collections::HashMap<String, Vec<Document>>, CommandError> {
        let mut fetched = std::collections::HashMap::new();
        let local_sharded = routing.collection(ns).is_some();
        for coll in shoal_query::lookup_collections(pipeline) {
            let foreign = Namespace::new(&ns.db, &coll)?;
            if routing.collection(&foreign).is_some() {
                return Err(CommandError::new(
                    ErrorCode(28769),
                    format!("$lookup from a sharded collection ({foreign}) is not supported yet"),
                ));
            }
            if local_sharded {
                let docs = self.fetch_collection(&foreign, routing).await?;
                fetched.insert(coll, docs);
            }
        }
        Ok(fetched)
    }

    /// Every document of an unsharded collection, from its primary shard (bounded).
    async fn fetch_collection(
        &self,
        ns: &Namespace,
        routing: &RoutingCache,
    ) -> Result<Vec<Document>, CommandError> {
        let placement = super::placement_in(routing, ns);
        let Some(host) = self.unsharded_host(&placement, routing)? else {
            return Ok(Vec::new());
        };
        let request = doc! {"find": ns.coll.clone(), "batchSize": SHARD_GETMORE_DOCS};
        let target = ShardTarget::unversioned(host);
        let mut streams = self.open_streams(&ns.db, &[target], &request).await?;
        drain(&mut streams, &self.cluster, AGGREGATE_MERGE_DOCS_MAX).await
    }
}
