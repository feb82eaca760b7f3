//! The read commands: `find`, `getMore`, `killCursors`, `count`, `distinct` and `aggregate`.
//!
//! Batches follow MongoDB: the first batch holds `batchSize` documents (default 101), a
//! `getMore` without `batchSize` returns as many as fit, and every batch stops before it would
//! exceed [`BATCH_BYTES_MAX`] (but always carries at least one document).

use std::collections::{BTreeMap, VecDeque};

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode, Namespace};
use shoal_query::{Filter, Projection, SortSpec};

use crate::{
    args::{Fields, collection_ns},
    catalog,
    cursor::{Cursor, ScanState, Source},
    engine::Engine,
    keys::encode_document,
    matching::{collect_matching, count_matching},
    plan::{self, Plan, QueryShape},
    scan::ExecStats,
    txn::{Direct, Step},
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
        let projection = parse_projection(state.projection.as_ref(), &filter)?;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let ScanState {
            scan,
            skip_left,
            limit_left,
            ..
        } = state;
        let exhausted = scan.run(&Direct(self.kv.as_ref()), |_, document, size| {
            if !filter.matches(&document) {
                return Ok::<_, CommandError>(Step::Next);
            }
            if *skip_left > 0 {
                *skip_left -= 1;
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
            if let Some(left) = limit_left.as_mut() {
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
        })?;
        Ok((batch, exhausted || state.limit_left == Some(0)))
    }

    /// `find`.
    pub(crate) fn find(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let request = FindRequest::parse(db, command)?;
        let ns = request.ns.to_string();
        let Some(entry) = catalog::lookup(&Direct(self.kv.as_ref()), &ns)? else {
            return Ok(cursor_reply(0, &ns, "firstBatch", Vec::new()));
        };
        let plan = plan::choose(&entry, request.shape())?;
        let mut stats = ExecStats::default();
        let source = self.find_source(&request, &plan, &mut stats)?;
        self.open_cursor(CursorSpec {
            ns,
            db: db.to_owned(),
            coll: request.ns.coll.clone(),
            source,
            batch_docs: request.batch_docs,
            single_batch: request.single_batch,
        })
    }

    /// The results of a find under `plan`: a lazy scan when the plan yields them in order,
    /// else materialized and sorted (what was examined then goes to `stats`).
    pub(crate) fn find_source(
        &self,
        request: &FindRequest,
        plan: &Plan,
        stats: &mut ExecStats,
    ) -> Result<Source, CommandError> {
        if plan.sorted {
            return Ok(Source::Scan(ScanState {
                scan: plan.scan(),
                filter: request.filter_doc.clone(),
                projection: request.projection_doc.clone(),
                skip_left: request.skip,
                limit_left: request.limit,
            }));
        }
        let reader = Direct(self.kv.as_ref());
        let mut matches = collect_matching(&reader, plan, &request.filter, stats)?;
        request.sort.sort(&mut matches);
        let skip = usize::try_from(request.skip).unwrap_or(usize::MAX);
        let take = request.limit.map_or(usize::MAX, |limit| {
            usize::try_from(limit).unwrap_or(usize::MAX)
        });
        let projection = parse_projection(request.projection_doc.as_ref(), &request.filter)?;
        let mut results = VecDeque::new();
        for document in matches.into_iter().skip(skip).take(take) {
            results.push_back(match &projection {
                Some(projection) => projection.apply(&document)?,
                None => document,
            });
        }
        Ok(Source::Buffered(results))
    }

    /// Runs a source to its end, for explain: how many documents it returns.
    pub(crate) fn drain(&self, source: &mut Source) -> Result<u64, CommandError> {
        let mut returned = 0u64;
        loop {
            let (batch, exhausted) = self.next_batch(source, usize::MAX)?;
            returned += batch.len() as u64;
            if exhausted {
                return Ok(returned);
            }
        }
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
        let request = CountRequest::parse(db, command)?;
        let reader = Direct(self.kv.as_ref());
        let n = match catalog::lookup(&reader, &request.ns)? {
            Some(entry) => {
                let plan = plan::choose(&entry, request.shape())?;
                let (n, _) = count_matching(
                    &reader,
                    &entry,
                    &request.query,
                    Some(&plan),
                    request.skip,
                    request.limit,
                )?;
                n
            }
            None => 0,
        };
        Ok(doc! {"n": number(n)})
    }

    /// `distinct`.
    pub(crate) fn distinct(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let request = DistinctRequest::parse(db, command)?;
        let reader = Direct(self.kv.as_ref());
        let Some(entry) = catalog::lookup(&reader, &request.ns)? else {
            return Ok(doc! {"values": []});
        };
        let plan = plan::choose(&entry, QueryShape::filter(&request.query))?;
        let (values, _) = self.distinct_values(&request, &plan)?;
        Ok(doc! {"values": values})
    }

    /// The distinct values of a `distinct` under `plan`, with what was examined.
    pub(crate) fn distinct_values(
        &self,
        request: &DistinctRequest,
        plan: &Plan,
    ) -> Result<(Vec<Bson>, ExecStats), CommandError> {
        let filter = Filter::parse(&request.query)?;
        // Keyed by the order-preserving encoding: equal values (1, 1.0) collapse to one, and
        // the reply comes out in BSON order.
        let mut values: BTreeMap<Vec<u8>, Bson> = BTreeMap::new();
        let mut bytes = 0usize;
        let mut scan = plan.scan();
        scan.run(&Direct(self.kv.as_ref()), |_, document, _| {
            if !filter.matches(&document) {
                return Ok::<_, CommandError>(Step::Next);
            }
            for value in shoal_query::path::distinct_values(&document, &request.key) {
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
        Ok((values.into_values().collect(), scan.stats))
    }
}

/// The positional-aware projection of a find.
fn parse_projection(
    projection: Option<&Document>,
    filter: &Filter,
) -> Result<Option<Projection>, CommandError> {
    Ok(projection
        .map(Projection::parse)
        .transpose()?
        .map(|projection| projection.with_query(filter.clone())))
}

/// A parsed `find`.
pub(crate) struct FindRequest {
    pub ns: Namespace,
    pub filter_doc: Document,
    pub filter: Filter,
    pub projection_doc: Option<Document>,
    pub sort_doc: Document,
    pub sort: SortSpec,
    pub skip: u64,
    pub limit: Option<u64>,
    pub batch_docs: u64,
    pub single_batch: bool,
    pub hint: Option<Bson>,
}

/// `hint` as given: an index name or key pattern (or `{$natural: 1}`).
pub(crate) fn hint_field(command: &Document, label: &str) -> Result<Option<Bson>, CommandError> {
    match command.get("hint") {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(key)) if key.is_empty() => Ok(None),
        Some(hint @ (Bson::String(_) | Bson::Document(_))) => Ok(Some(hint.clone())),
        Some(other) => Err(CommandError::type_mismatch(
            &format!("{label}.hint"),
            "object",
            other,
        )),
    }
}

impl FindRequest {
    /// Parses everything first so that a bad query fails even on a missing collection.
    pub fn parse(db: &str, command: &Document) -> Result<FindRequest, CommandError> {
        let ns = collection_ns(db, command, "find")?;
        let fields = Fields::new(command, "find");
        let filter_doc = fields.doc("filter")?.cloned().unwrap_or_default();
        let projection_doc = fields.doc("projection")?.cloned();
        let sort_doc = fields.doc("sort")?.cloned().unwrap_or_default();
        if fields.flag("tailable", false)? {
            return Err(CommandError::bad_value(
                "tailable cursor requested on non capped collection",
            ));
        }
        let filter = Filter::parse(&filter_doc)?;
        parse_projection(projection_doc.as_ref(), &filter)?;
        let sort = SortSpec::parse(&sort_doc)?;
        Ok(FindRequest {
            ns,
            filter,
            projection_doc,
            sort,
            skip: fields.non_negative("skip")?.unwrap_or(0),
            limit: fields.non_negative("limit")?.filter(|limit| *limit > 0),
            batch_docs: fields
                .non_negative("batchSize")?
                .unwrap_or(FIRST_BATCH_DOCS_DEFAULT),
            single_batch: fields.flag("singleBatch", false)?,
            hint: hint_field(command, "find")?,
            filter_doc,
            sort_doc,
        })
    }

    /// What the planner needs.
    pub fn shape(&self) -> QueryShape<'_> {
        QueryShape {
            filter: &self.filter_doc,
            sort: Some(&self.sort_doc),
            hint: self.hint.as_ref(),
        }
    }
}

/// A parsed `count`.
pub(crate) struct CountRequest {
    pub ns: String,
    pub query: Document,
    pub skip: u64,
    pub limit: u64,
    pub hint: Option<Bson>,
}

impl CountRequest {
    pub fn parse(db: &str, command: &Document) -> Result<CountRequest, CommandError> {
        let ns = collection_ns(db, command, "count")?.to_string();
        let fields = Fields::new(command, "count");
        let query = fields.doc("query")?.cloned().unwrap_or_default();
        Filter::parse(&query)?;
        Ok(CountRequest {
            ns,
            query,
            skip: fields.non_negative("skip")?.unwrap_or(0),
            // A negative limit means the same as a positive one for count, as in MongoDB.
            limit: fields.i64("limit")?.unwrap_or(0).unsigned_abs(),
            hint: hint_field(command, "count")?,
        })
    }

    pub fn shape(&self) -> QueryShape<'_> {
        QueryShape {
            filter: &self.query,
            sort: None,
            hint: self.hint.as_ref(),
        }
    }
}

/// A parsed `distinct`.
pub(crate) struct DistinctRequest {
    pub ns: String,
    pub key: String,
    pub query: Document,
}

impl DistinctRequest {
    pub fn parse(db: &str, command: &Document) -> Result<DistinctRequest, CommandError> {
        let ns = collection_ns(db, command, "distinct")?.to_string();
        let fields = Fields::new(command, "distinct");
        let key = fields.str("key")?.ok_or_else(|| fields.missing("key"))?;
        let query = fields.doc("query")?.cloned().unwrap_or_default();
        Filter::parse(&query)?;
        Ok(DistinctRequest {
            ns,
            key: key.to_owned(),
            query,
        })
    }
}
