//! Client cursors at the router. A query that reaches several shards opens one cursor on each
//! and merges them here: in sort order when the query sorts (each shard returns its part
//! sorted, so a k-way merge of the heads is the global order), otherwise one shard after the
//! other; skip, limit and projection are applied after the merge. Shard batches are fetched
//! lazily with `getMore`, so a cursor over a large result holds at most a batch per shard.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode};
use shoal_query::{Projection, SortSpec};

use crate::cluster::Cluster;

/// The most open client cursors the router keeps.
pub const CURSORS_MAX: usize = 20_000;
/// A client cursor unused this long is closed (and its shard cursors killed).
pub const CURSOR_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Documents per `getMore` the router asks a shard for.
pub const SHARD_GETMORE_DOCS: i64 = 1_000;
/// The size a reply batch stops growing at, leaving room under the 16 MiB reply limit.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024 - 64 * 1024;

/// One shard's open cursor, with the documents of its last batch not yet consumed.
#[derive(Debug)]
pub struct ShardStream {
    host: String,
    db: String,
    /// The collection name `getMore` names (from the cursor's `ns`).
    collection: String,
    cursor_id: i64,
    buffer: VecDeque<Document>,
}

impl ShardStream {
    /// Reads a shard's cursor reply (`{cursor: {id, ns, firstBatch}}`).
    pub fn from_reply(host: &str, db: &str, reply: &Document) -> Result<ShardStream, CommandError> {
        if let Some(error) = CommandError::from_reply(reply) {
            return Err(error);
        }
        let (cursor_id, ns, batch) = parse_cursor(reply, "firstBatch")?;
        let collection = ns
            .split_once('.')
            .map(|(_, coll)| coll.to_owned())
            .unwrap_or_default();
        Ok(ShardStream {
            host: host.to_owned(),
            db: db.to_owned(),
            collection,
            cursor_id,
            buffer: batch,
        })
    }

    fn is_done(&self) -> bool {
        self.buffer.is_empty() && self.cursor_id == 0
    }

    /// Fetches the next shard batch if this stream's buffer is empty and the shard has more.
    async fn fill(&mut self, cluster: &Cluster) -> Result<(), CommandError> {
        if !self.buffer.is_empty() || self.cursor_id == 0 {
            return Ok(());
        }
        let request = doc! {
            "getMore": self.cursor_id, "collection": self.collection.clone(), "batchSize": SHARD_GETMORE_DOCS,
        };
        let reply = cluster.call_ok(&self.host, &self.db, request).await?;
        let (cursor_id, _, batch) = parse_cursor(&reply, "nextBatch")?;
        self.cursor_id = cursor_id;
        self.buffer = batch;
        Ok(())
    }

    async fn kill(&mut self, cluster: &Cluster) {
        if self.cursor_id == 0 {
            return;
        }
        let request = doc! {"killCursors": self.collection.clone(), "cursors": [self.cursor_id]};
        // A failed kill leaves the shard cursor to its idle timeout; nothing else depends on it.
        let _ = cluster.call(&self.host, &self.db, request).await;
        self.cursor_id = 0;
    }
}

/// Parses `{cursor: {id, ns, <batch_field>: [...]}}`.
pub fn parse_cursor(
    reply: &Document,
    batch_field: &str,
) -> Result<(i64, String, VecDeque<Document>), CommandError> {
    let malformed =
        || CommandError::new(ErrorCode::INTERNAL_ERROR, "shard cursor reply is malformed");
    let cursor = reply.get_document("cursor").map_err(|_| malformed())?;
    let id = cursor.get_i64("id").map_err(|_| malformed())?;
    let ns = cursor.get_str("ns").unwrap_or_default().to_owned();
    let batch = cursor.get_array(batch_field).map_err(|_| malformed())?;
    let docs = batch
        .iter()
        .filter_map(|d| d.as_document().cloned())
        .collect();
    Ok((id, ns, docs))
}

/// How the router post-processes merged shard results.
#[derive(Debug, Default)]
pub struct MergePlan {
    /// Merge in this order (each shard's stream is sorted by it); `None` concatenates.
    pub sort: Option<SortSpec>,
    /// Documents to drop first.
    pub skip: u64,
    /// Documents to return at most; `None` for no limit.
    pub limit: Option<u64>,
    /// Projection applied after merging (when shards could not apply it before the sort).
    pub projection: Option<Projection>,
}

/// A client cursor.
#[derive(Debug)]
pub enum Cursor {
    /// Shard cursors merged on demand.
    Merge {
        /// Shard streams.
        streams: Vec<ShardStream>,
        /// Post-processing.
        plan: MergePlan,
    },
    /// Results computed at the router (merged aggregation, catalog listings).
    Buffered(VecDeque<Document>),
}

impl Cursor {
    /// Produces the next batch of at most `batch_docs` documents and says whether the cursor is
    /// exhausted afterwards.
    pub async fn next_batch(
        &mut self,
        cluster: &Cluster,
        batch_docs: usize,
    ) -> Result<(Vec<Document>, bool), CommandError> {
        match self {
            Cursor::Buffered(docs) => {
                let mut batch = Vec::new();
                let mut bytes = 0;
                while batch.len() < batch_docs {
                    let Some(doc) = docs.pop_front() else { break };
                    bytes += document_bytes(&doc);
                    batch.push(doc);
                    if bytes >= BATCH_BYTES_MAX {
                        break;
                    }
                }
                Ok((batch, docs.is_empty()))
            }
            Cursor::Merge { streams, plan } => {
                merge_batch(streams, plan, cluster, batch_docs).await
            }
        }
    }

    /// Kills the shard cursors behind this cursor.
    pub async fn kill(&mut self, cluster: &Cluster) {
        if let Cursor::Merge { streams, .. } = self {
            for stream in streams.iter_mut() {
                stream.kill(cluster).await;
            }
        }
    }
}

async fn merge_batch(
    streams: &mut [ShardStream],
    plan: &mut MergePlan,
    cluster: &Cluster,
    batch_docs: usize,
) -> Result<(Vec<Document>, bool), CommandError> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < batch_docs && bytes < BATCH_BYTES_MAX {
        if plan.limit == Some(0) {
            break;
        }
        let Some(index) = next_stream(streams, plan.sort.as_ref(), cluster).await? else {
            break;
        };
        let Some(doc) = streams[index].buffer.pop_front() else {
            break;
        };
        if plan.skip > 0 {
            plan.skip -= 1;
            continue;
        }
        let doc = match &plan.projection {
            Some(projection) => projection.apply(&doc).map_err(CommandError::from)?,
            None => doc,
        };
        bytes += document_bytes(&doc);
        batch.push(doc);
        if let Some(limit) = plan.limit.as_mut() {
            *limit -= 1;
        }
    }
    let exhausted =
        plan.limit == Some(0) || streams_done(streams, plan.sort.is_some(), cluster).await?;
    if exhausted {
        for stream in streams.iter_mut() {
            stream.kill(cluster).await;
        }
    }
    Ok((batch, exhausted))
}

/// Whether no stream has anything left; fetches ahead so that an exhausted cursor reports id 0
/// in the same reply, as drivers expect of a finished query.
async fn streams_done(
    streams: &mut [ShardStream],
    _sorted: bool,
    cluster: &Cluster,
) -> Result<bool, CommandError> {
    for stream in streams.iter_mut() {
        stream.fill(cluster).await?;
        if !stream.is_done() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The stream whose head comes next: the smallest head by `sort`, or the first non-empty
/// stream when unsorted.
async fn next_stream(
    streams: &mut [ShardStream],
    sort: Option<&SortSpec>,
    cluster: &Cluster,
) -> Result<Option<usize>, CommandError> {
    let mut best: Option<usize> = None;
    for index in 0..streams.len() {
        streams[index].fill(cluster).await?;
        let Some(head) = streams[index].buffer.front() else {
            continue;
        };
        let Some(sort) = sort else {
            return Ok(Some(index));
        };
        best = match best {
            Some(current) => {
                let current_head = streams[current].buffer.front();
                match current_head {
                    Some(current_head) if sort.compare(head, current_head).is_lt() => Some(index),
                    _ => Some(current),
                }
            }
            None => Some(index),
        };
    }
    Ok(best)
}

/// The encoded size of a document (for batch byte limits).
pub fn document_bytes(doc: &Document) -> usize {
    bson::to_vec(doc).map(|bytes| bytes.len()).unwrap_or(0)
}

/// The reply to `find`/`aggregate`/`getMore`.
pub fn cursor_reply(id: i64, ns: &str, batch: Vec<Document>, first: bool) -> Document {
    let field = if first { "firstBatch" } else { "nextBatch" };
    let batch: Vec<Bson> = batch.into_iter().map(Bson::Document).collect();
    doc! {"cursor": {"id": id, "ns": ns, field: batch}, "ok": 1.0}
}

/// A registered cursor, locked while a `getMore` runs on it.
pub type SharedCursor = Arc<tokio::sync::Mutex<Cursor>>;

struct Entry {
    cursor: SharedCursor,
    ns: String,
    last_used: Instant,
}

/// The open client cursors of this router.
#[derive(Default)]
pub struct CursorTable {
    entries: Mutex<HashMap<i64, Entry>>,
}

impl CursorTable {
    /// Registers a cursor and returns its id (positive, random), with the idle cursors it
    /// dropped to make room, which the caller must kill so their shard cursors close too. When
    /// the table is still full the registration fails.
    pub fn register(
        &self,
        ns: &str,
        cursor: Cursor,
    ) -> Result<(i64, Vec<SharedCursor>), CommandError> {
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| CommandError::internal("cursor table poisoned"))?;
        let idle: Vec<i64> = entries
            .iter()
            .filter(|(_, entry)| entry.last_used.elapsed() >= CURSOR_IDLE_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        let evicted = idle
            .iter()
            .filter_map(|id| entries.remove(id))
            .map(|entry| entry.cursor)
            .collect();
        if entries.len() >= CURSORS_MAX {
            return Err(CommandError::new(
                ErrorCode::OPERATION_FAILED,
                format!(
                    "too many open cursors (at most {CURSORS_MAX}); close some or let them time out"
                ),
            ));
        }
        let mut id: i64 = rand::random::<i64>() & i64::MAX;
        while id == 0 || entries.contains_key(&id) {
            id = rand::random::<i64>() & i64::MAX;
        }
        let entry = Entry {
            cursor: Arc::new(tokio::sync::Mutex::new(cursor)),
            ns: ns.to_owned(),
            last_used: Instant::now(),
        };
        entries.insert(id, entry);
        Ok((id, evicted))
    }

    /// The cursor with this id, if open; checks it belongs to `ns`.
    pub fn get(&self, id: i64, ns: &str) -> Result<Arc<tokio::sync::Mutex<Cursor>>, CommandError> {
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| CommandError::internal("cursor table poisoned"))?;
        let not_found = || {
            CommandError::new(
                ErrorCode::CURSOR_NOT_FOUND,
                format!("cursor id {id} not found"),
            )
        };
        let entry = entries.get_mut(&id).ok_or_else(not_found)?;
        if entry.last_used.elapsed() >= CURSOR_IDLE_TIMEOUT {
            entries.remove(&id);
            return Err(not_found());
        }
        if entry.ns != ns {
            return Err(CommandError::new(
                ErrorCode::UNAUTHORIZED,
                format!(
                    "cursor {id} belongs to {} and cannot be used with {ns}",
                    entry.ns
                ),
            ));
        }
        entry.last_used = Instant::now();
        Ok(Arc::clone(&entry.cursor))
    }

    /// Removes a cursor; returns it if it was open.
    pub fn remove(&self, id: i64) -> Option<Arc<tokio::sync::Mutex<Cursor>>> {
        let mut entries = self.entries.lock().ok()?;
        entries.remove(&id).map(|entry| entry.cursor)
    }
}

/// The most BSON bytes the router gathers for the merging half of a pipeline, like a server's
/// in-memory limit for a blocking stage without `allowDiskUse`.
pub const MERGE_BYTES_MAX: usize = 100 * 1024 * 1024;

/// Reads every remaining document of `streams`, for merges that need all shard output at once
/// (a pipeline's merging half). Fails past `docs_max` documents or [`MERGE_BYTES_MAX`] bytes
/// rather than exhausting memory, and then kills every shard cursor.
pub async fn drain(
    streams: &mut [ShardStream],
    cluster: &Cluster,
    docs_max: usize,
) -> Result<Vec<Document>, CommandError> {
    let mut docs = Vec::new();
    let mut bytes = 0;
    for index in 0..streams.len() {
        loop {
            let stream = &mut streams[index];
            bytes += stream.buffer.iter().map(document_bytes).sum::<usize>();
            docs.extend(stream.buffer.drain(..));
            if docs.len() > docs_max || bytes > MERGE_BYTES_MAX {
                for stream in streams.iter_mut() {
                    stream.kill(cluster).await;
                }
                return Err(CommandError::new(
                    ErrorCode::QUERY_EXCEEDED_MEMORY_LIMIT,
                    format!(
                        "the merging part of this pipeline needs more than {docs_max} documents \
                         or {MERGE_BYTES_MAX} bytes at the router; add a $match or a $limit"
                    ),
                ));
            }
            let stream = &mut streams[index];
            if stream.cursor_id == 0 {
                break;
            }
            stream.fill(cluster).await?;
        }
    }
    Ok(docs)
}
