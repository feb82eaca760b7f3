//! The read commands: `find`, `getMore`, `killCursors`, `count`, `distinct` and `aggregate`.
//!
//! Batches follow MongoDB: the first batch holds `batchSize` documents (default 101), a
//! `getMore` without `batchSize` returns as many as fit, and every batch stops before it would
//! exceed [`BATCH_BYTES_MAX`] (but always carries at least one document).

use std::collections::{BTreeMap, VecDeque};

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode};
use shoal_query::{Filter, Projection, SortSpec};

use crate::{
    args::{Fields, collection_ns},
    catalog,
    cursor::{Cursor, ScanState, Source},
    engine::Engine,
    keys::encode_document,
    matching::{collect_matching, count_matching, filter_range},
    txn::{Direct, Step, scan_documents},
};

/// Documents in a first batch when the client gives no `batchSize`, as MongoDB.
pub const FIRST_BATCH_DOCS_DEFAULT: u64 = 101;
/// Most bytes of documents in one batch (MongoDB's `BSONObjMaxUserSize`), so a reply stays
/// under the 16 MiB + 16 KiB message limit.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most bytes of distinct values in one `distinct` reply.
pub const DISTINCT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A count as mongod's `appendNumber` writes it: Int32 when it fits, else Int64.
pub(crate) fn number(n: u64) -> Bson {
    match i32::try_from(n) {
        Ok(small) => Bson::Int32(small),
        Err(_) => Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX)),
    }
}

/// A cursor reply: `{cursor: {id, ns, firstBatch|nextBatch}}` (the engine adds `ok`).
pub(crate) fn cursor_reply(id: i64, ns: &str, field: &str, batch: Vec<Document>) -> Document {
    doc! {"cursor": {"id": id, "ns": ns, field: batch}}
}

/// Where a new cursor's results come from and how its first batch is cut.
pub(crate) struct CursorSpec {
    pub ns: String,
    pub db: String,
    pub coll: String,
    pub source: Source,
    pub batch_docs: u64,
    pub single_batch: bool,
}

fn batch_limit(batch_size: Option<u64>) -> usize {
    match batch_size {
        None | Some(0) => usize::MAX,
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

impl Engine {
    /// Cuts the first batch and keeps the cursor open when more may follow.
    pub(crate) fn open_cursor(&self, mut spec: CursorSpec) -> Result<Document, CommandError> {
        let docs_max = usize::try_from(spec.batch_docs).unwrap_or(usize::MAX);
        let (batch, exhausted) = self.next_batch(&mut spec.source, docs_max)?;
        let id = if exhausted || spec.single_batch {
            0
        } else {
            let cursor = Cursor::new(spec.ns.clone(), spec.db, spec.coll, spec.source);
            self.lock_cursors().insert(cursor)
        };
        Ok(cursor_reply(id, &spec.ns, "firstBatch", batch))
    }

    /// The next batch of at most `docs_max` documents, and whether the source is exhausted.
    fn next_batch(
        &self,
        source: &mut Source,
        docs_max: usize,
    ) -> Result<(Vec<Document>, bool), CommandError> {
        match source {
            Source::Buffered(queue) => {
                let mut batch = Vec::new();
                let mut bytes = 0usize;
                while batch.len() < docs_max {
                    let Some(front) = queue.front() else { break };
                    let size = encode_document(front).len();
                    if !batch.is_empty() && bytes + size > BATCH_BYTES_MAX {
                        break;
                    }
                    bytes += size;
                    batch.extend(queue.pop_front());
                }
                let exhausted = queue.is_empty();
                Ok((batch, exhausted))
            }
            Source::Scan(state) => self.scan_batch(state, docs_max),
        }
    }

    fn scan_batch(
        &self,
        state: &mut ScanState,
        docs_max: usize,
    ) -> Result<(Vec<Document>, bool), CommandError> {
        if state.limit_left == Some(0) {
            return Ok((Vec::new(), true));
        }
        if docs_max == 0 {
            return Ok((Vec::new(), false));
        }
        let filter = Filter::parse(&state.filter)?;
        let projection = state
            .projection
            .as_ref()
            .map(Projection::parse)
            .transpose()?;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let (start, end) = (std::mem::take(&mut state.resume), state.end.clone());
        let resume = scan_documents(
            &Direct(self.kv.as_ref()),
            &start,
            &end,
            |_, document, size| {
                if !filter.matches(&document) {
                    return Ok::<_, CommandError>(Step::Next);
                }
                if state.skip_left > 0 {
                    state.skip_left -= 1;
                    return Ok(Step::Next);
                }
                let (out, size) = match &projection {
                    Some(projection) => {
                        let projected = projection.apply(&document)?;
                        let size = encode_document(&projected).len();
                        (projected, size)
                    }
                    None => (document, size),
                };
                if !batch.is_empty() && bytes + size > BATCH_BYTES_MAX {
                    return Ok(Step::StopBefore);
                }
                bytes += size;
                batch.push(out);
                if let Some(left) = &mut state.limit_left {
                    *left -= 1;
                    if *left == 0 {
                        return Ok(Step::StopAfter);
                    }
                }
                Ok(if batch.len() >= docs_max {
                    Step::StopAfter
                } else {
                    Step::Next
                })
            },
        )?;
        let exhausted = resume.is_none() || state.limit_left == Some(0);
        state.resume = resume.unwrap_or_default();
        Ok((batch, exhausted))
    }

    /// `find`.
    pub(crate) fn find(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "find")?;
        let fields = Fields::new(command, "find");
        let filter_doc = fields.doc("filter")?.cloned().unwrap_or_default();
        let projection_doc = fields.doc("projection")?.cloned();
        let sort_doc = fields.doc("sort")?.cloned().unwrap_or_default();
        let skip = fields.non_negative("skip")?.unwrap_or(0);
        let limit = fields.non_negative("limit")?.filter(|limit| *limit > 0);
        let batch_docs = fields
            .non_negative("batchSize")?
            .unwrap_or(FIRST_BATCH_DOCS_DEFAULT);
        let single_batch = fields.flag("singleBatch", false)?;
        if fields.flag("tailable", false)? {
            return Err(CommandError::bad_value(
                "tailable cursor requested on non capped collection",
            ));
        }
        // Parse everything first so that a bad query fails even on a missing collection.
        let filter = Filter::parse(&filter_doc)?;
        let projection = projection_doc.as_ref().map(Projection::parse).transpose()?;
        let sort = SortSpec::parse(&sort_doc)?;
        let ns_str = ns.to_string();
        let Some(entry) = catalog::lookup(&Direct(self.kv.as_ref()), &ns_str)? else {
            return Ok(cursor_reply(0, &ns_str, "firstBatch", Vec::new()));
        };
        let source = if sort.is_empty() {
            let (resume, end) = filter_range(entry.id, &filter_doc);
            Source::Scan(ScanState {
                resume,
                end,
                filter: filter_doc,
                projection: projection_doc,
                skip_left: skip,
                limit_left: limit,
            })
        } else {
            let mut matches =
                collect_matching(&Direct(self.kv.as_ref()), entry.id, &filter_doc, &filter)?;
            matches.sort_by(|a, b| sort.compare(a, b));
            let skip = usize::try_from(skip).unwrap_or(usize::MAX);
            let take = limit.map_or(usize::MAX, |limit| {
                usize::try_from(limit).unwrap_or(usize::MAX)
            });
            let mut results = VecDeque::new();
            for document in matches.into_iter().skip(skip).take(take) {
                results.push_back(match &projection {
                    Some(projection) => projection.apply(&document)?,
                    None => document,
                });
            }
            Source::Buffered(results)
        };
        self.open_cursor(CursorSpec {
            ns: ns_str,
            db: db.to_owned(),
            coll: ns.coll,
            source,
            batch_docs,
            single_batch,
        })
    }

    /// `getMore`.
    pub(crate) fn get_more(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let id = match command.get("getMore") {
            Some(Bson::Int64(id)) => *id,
            Some(Bson::Int32(id)) => i64::from(*id),
            Some(other) => return Err(CommandError::type_mismatch("getMore", "long", other)),
            None => return Err(CommandError::failed_to_parse("getMore needs a cursor id")),
        };
        let fields = Fields::new(command, "getMore");
        let coll = fields
            .str("collection")?
            .ok_or_else(|| fields.missing("collection"))?;
        let docs_max = batch_limit(fields.non_negative("batchSize")?);
        let mut cursor = self.lock_cursors().take(id).ok_or_else(|| {
            CommandError::new(
                ErrorCode::CURSOR_NOT_FOUND,
                format!("cursor id {id} not found"),
            )
        })?;
        if cursor.db != db || cursor.coll != coll {
            let err = CommandError::new(
                ErrorCode::UNAUTHORIZED,
                format!(
                    "Requested getMore on namespace '{db}.{coll}', but cursor belongs to a different namespace {}",
                    cursor.ns
                ),
            );
            self.lock_cursors().restore(id, cursor);
            return Err(err);
        }
        // A failed batch closes the cursor, as in MongoDB.
        let (batch, exhausted) = self.next_batch(&mut cursor.source, docs_max)?;
        let ns = cursor.ns.clone();
        let reply_id = if exhausted {
            0
        } else {
            self.lock_cursors().restore(id, cursor);
            id
        };
        Ok(cursor_reply(reply_id, &ns, "nextBatch", batch))
    }

    /// `killCursors`.
    pub(crate) fn kill_cursors(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "killCursors")?.to_string();
        let fields = Fields::new(command, "killCursors");
        let ids = fields
            .array("cursors")?
            .ok_or_else(|| fields.missing("cursors"))?;
        let mut killed = Vec::new();
        let mut not_found = Vec::new();
        let mut table = self.lock_cursors();
        for (index, id) in ids.iter().enumerate() {
            let id = match id {
                Bson::Int64(id) => *id,
                Bson::Int32(id) => i64::from(*id),
                other => {
                    return Err(CommandError::type_mismatch(
                        &format!("killCursors.cursors.{index}"),
                        "long",
                        other,
                    ));
                }
            };
            if table.ns_of(id) == Some(ns.as_str()) && table.remove(id) {
                killed.push(Bson::Int64(id));
            } else {
                not_found.push(Bson::Int64(id));
            }
        }
        Ok(doc! {
            "cursorsKilled": killed,
            "cursorsNotFound": not_found,
            "cursorsAlive": [],
            "cursorsUnknown": [],
        })
    }

    /// `count`.
    pub(crate) fn count(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "count")?.to_string();
        let fields = Fields::new(command, "count");
        let query = fields.doc("query")?.cloned().unwrap_or_default();
        let skip = fields.non_negative("skip")?.unwrap_or(0);
        // A negative limit means the same as a positive one for count, as in MongoDB.
        let limit = fields.i64("limit")?.unwrap_or(0).unsigned_abs();
        Filter::parse(&query)?;
        let reader = Direct(self.kv.as_ref());
        let n = match catalog::lookup(&reader, &ns)? {
            Some(entry) => count_matching(&reader, entry.id, &query, skip, limit)?,
            None => 0,
        };
        Ok(doc! {"n": number(n)})
    }

    /// `distinct`.
    pub(crate) fn distinct(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "distinct")?.to_string();
        let fields = Fields::new(command, "distinct");
        let key = fields.str("key")?.ok_or_else(|| fields.missing("key"))?;
        let query = fields.doc("query")?.cloned().unwrap_or_default();
        let filter = Filter::parse(&query)?;
        let reader = Direct(self.kv.as_ref());
        let Some(entry) = catalog::lookup(&reader, &ns)? else {
            return Ok(doc! {"values": []});
        };
        // Keyed by the order-preserving encoding: equal values (1, 1.0) collapse to one, and
        // the reply comes out in BSON order.
        let mut values: BTreeMap<Vec<u8>, Bson> = BTreeMap::new();
        let mut bytes = 0usize;
        let (start, end) = filter_range(entry.id, &query);
        scan_documents(&reader, &start, &end, |_, document, _| {
            if !filter.matches(&document) {
                return Ok::<_, CommandError>(Step::Next);
            }
            for value in shoal_query::path::distinct_values(&document, key) {
                let mut encoded = Vec::new();
                shoal_query::keycode::encode(&value, &mut encoded);
                if let std::collections::btree_map::Entry::Vacant(slot) = values.entry(encoded) {
                    bytes += slot.key().len();
                    slot.insert(value);
                }
            }
            if bytes > DISTINCT_BYTES_MAX {
                return Err(CommandError::new(
                    ErrorCode::BSON_OBJECT_TOO_LARGE,
                    format!("distinct too big, {DISTINCT_BYTES_MAX} bytes cap"),
                ));
            }
            Ok(Step::Next)
        })?;
        Ok(doc! {"values": values.into_values().collect::<Vec<_>>()})
    }
}
