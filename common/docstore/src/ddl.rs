//! Catalog commands (`create`, `drop`, `dropDatabase`, the listings, `collStats`, `dataSize`,
//! `dbHash`) and the cluster-internal `_shoalCountRange`.

use std::collections::{BTreeMap, VecDeque};

use bson::{Bson, Document, doc};
use shoal_common::{
    CommandError, ErrorCode, Namespace, bsonorder::compare_key_values, chunks::ShardKeyPattern,
};
use shoal_query::Filter;

use crate::{
    args::{Fields, collection_ns},
    catalog,
    cursor::Source,
    engine::Engine,
    hash::Fnv128,
    keys::{CollectionEntry, catalog_key, collection_range},
    kv::{Space, WriteBatch},
    read::{CursorSpec, FIRST_BATCH_DOCS_DEFAULT},
    txn::{Direct, Reader, Step, Txn, scan_documents},
    validation::Validation,
};

/// `create` options that change behaviour we do not implement; refusing them beats silently
/// ignoring a view definition or a time series layout.
const UNSUPPORTED_CREATE_OPTIONS: &[&str] = &[
    "viewOn",
    "pipeline",
    "timeseries",
    "clusteredIndex",
    "encryptedFields",
];

/// The only index every collection has.
fn id_index() -> Document {
    doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
}

fn namespace_not_found(errmsg: String) -> CommandError {
    CommandError::new(ErrorCode::NAMESPACE_NOT_FOUND, errmsg)
}

/// The `cursor.batchSize` of a listing command.
fn listing_batch(fields: &Fields<'_>) -> Result<u64, CommandError> {
    match fields.doc("cursor")? {
        Some(options) => Ok(Fields::new(options, "cursor")
            .non_negative("batchSize")?
            .unwrap_or(FIRST_BATCH_DOCS_DEFAULT)),
        None => Ok(FIRST_BATCH_DOCS_DEFAULT),
    }
}

fn collection_info(entry: &CollectionEntry) -> Document {
    doc! {
        "name": entry.coll_name(),
        "type": "collection",
        "options": entry.validation.options(),
        "info": {"readOnly": false, "uuid": entry.uuid.to_bson()},
        "idIndex": id_index(),
    }
}

impl Engine {
    /// `create`.
    pub(crate) fn create(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "create")?.to_string();
        let fields = Fields::new(command, "create");
        if fields.flag("capped", false)? {
            return Err(CommandError::new(
                ErrorCode::NOT_IMPLEMENTED,
                "capped collections are not supported",
            ));
        }
        for option in UNSUPPORTED_CREATE_OPTIONS {
            if command
                .get(*option)
                .is_some_and(|value| *value != Bson::Null)
            {
                return Err(CommandError::new(
                    ErrorCode::NOT_IMPLEMENTED,
                    format!("create option '{option}' is not supported"),
                ));
            }
        }
        let mut validation = Validation::default();
        validation.update_from(command, "create")?;
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        if catalog::lookup(&txn, &ns)?.is_some() {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_EXISTS,
                format!("Collection {ns} already exists."),
            ));
        }
        let mut entry = catalog::create(&mut txn, &ns)?;
        if !validation.is_empty() {
            entry.validation = validation;
            txn.put(Space::Catalog, catalog_key(&ns), entry.encode());
        }
        txn.commit()?;
        Ok(Document::new())
    }

    /// `drop`.
    pub(crate) fn drop_collection(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "drop")?.to_string();
        let _writer = self.lock_writer();
        let entry = catalog::lookup(&Direct(self.kv.as_ref()), &ns)?
            .ok_or_else(|| namespace_not_found("ns not found".to_owned()))?;
        let mut batch = WriteBatch::new();
        catalog::drop_into(&mut batch, &entry);
        self.kv.write(batch, true)?;
        tracing::info!(ns, "dropped collection");
        let indexes = i32::try_from(entry.indexes.len() + 1).unwrap_or(i32::MAX);
        Ok(doc! {"nIndexesWas": indexes, "ns": ns})
    }

    /// `dropDatabase`.
    pub(crate) fn drop_database(&self, db: &str) -> Result<Document, CommandError> {
        let _writer = self.lock_writer();
        let entries = catalog::list_database(&Direct(self.kv.as_ref()), db)?;
        if !entries.is_empty() {
            let mut batch = WriteBatch::new();
            for entry in &entries {
                catalog::drop_into(&mut batch, entry);
            }
            self.kv.write(batch, true)?;
            tracing::info!(db, collections = entries.len(), "dropped database");
        }
        Ok(doc! {"dropped": db})
    }

    /// `listCollections`.
    pub(crate) fn list_collections(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let fields = Fields::new(command, "listCollections");
        let filter = Filter::parse(&fields.doc("filter")?.cloned().unwrap_or_default())?;
        let name_only = fields.flag("nameOnly", false)?;
        let batch_docs = listing_batch(&fields)?;
        let mut results = VecDeque::new();
        for entry in catalog::list_database(&Direct(self.kv.as_ref()), db)? {
            let info = collection_info(&entry);
            if !filter.matches(&info) {
                continue;
            }
            results.push_back(if name_only {
                doc! {"name": entry.coll_name(), "type": "collection"}
            } else {
                info
            });
        }
        self.open_cursor(CursorSpec {
            ns: format!("{db}.$cmd.listCollections"),
            db: db.to_owned(),
            coll: "$cmd.listCollections".to_owned(),
            source: Source::Buffered(results),
            batch_docs,
            single_batch: false,
        })
    }

    /// `listDatabases` (admin only).
    pub(crate) fn list_databases(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        if db != "admin" {
            return Err(CommandError::admin_only("listDatabases"));
        }
        let fields = Fields::new(command, "listDatabases");
        let filter = Filter::parse(&fields.doc("filter")?.cloned().unwrap_or_default())?;
        let name_only = fields.flag("nameOnly", false)?;
        let reader = Direct(self.kv.as_ref());
        let mut sizes: BTreeMap<String, i64> = BTreeMap::new();
        for entry in catalog::list_all(&reader)? {
            let stats = catalog::stats(&reader, entry.id)?;
            let db_name = entry
                .ns
                .split_once('.')
                .map_or(entry.ns.as_str(), |(db, _)| db);
            *sizes.entry(db_name.to_owned()).or_default() += stats.bytes;
        }
        let mut databases = Vec::new();
        let mut total = 0i64;
        for (name, size) in sizes {
            let entry = doc! {"name": name.clone(), "sizeOnDisk": size, "empty": false};
            if !filter.matches(&entry) {
                continue;
            }
            total += size;
            databases.push(if name_only {
                doc! {"name": name}
            } else {
                entry
            });
        }
        if name_only {
            return Ok(doc! {"databases": databases});
        }
        Ok(doc! {"databases": databases, "totalSize": total, "totalSizeMb": total / (1024 * 1024)})
    }

    /// `collStats`, from the statistics kept with every write.
    pub(crate) fn coll_stats(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = collection_ns(db, command, "collStats")?.to_string();
        let fields = Fields::new(command, "collStats");
        let scale = fields.i64("scale")?.unwrap_or(1);
        if scale < 1 {
            return Err(CommandError::bad_value("scale has to be >= 1"));
        }
        let reader = Direct(self.kv.as_ref());
        let entry = catalog::lookup(&reader, &ns)?
            .ok_or_else(|| namespace_not_found(format!("Collection [{ns}] not found.")))?;
        let stats = catalog::stats(&reader, entry.id)?;
        let average = if stats.count > 0 {
            stats.bytes / stats.count
        } else {
            0
        };
        let mut index_sizes = doc! {"_id_": 0_i64};
        for index in &entry.indexes {
            index_sizes.insert(index.name.clone(), 0_i64);
        }
        let nindexes = i32::try_from(entry.indexes.len() + 1).unwrap_or(i32::MAX);
        Ok(doc! {
            "ns": ns,
            "size": stats.bytes / scale,
            "count": stats.count,
            "avgObjSize": average,
            "storageSize": stats.bytes / scale,
            "totalIndexSize": 0_i64,
            "totalSize": stats.bytes / scale,
            "indexSizes": index_sizes,
            "nindexes": nindexes,
            "scaleFactor": scale,
            "capped": false,
        })
    }

    /// `dataSize`: the whole collection, or the documents whose `keyPattern` value lies in
    /// `[min, max)`.
    pub(crate) fn data_size(&self, command: &Document) -> Result<Document, CommandError> {
        let fields = Fields::new(command, "dataSize");
        let ns = fields
            .str("dataSize")?
            .ok_or_else(|| fields.missing("dataSize"))?;
        let ns = Namespace::parse(ns)?.to_string();
        let reader = Direct(self.kv.as_ref());
        let Some(entry) = catalog::lookup(&reader, &ns)? else {
            return Ok(doc! {"size": 0_i64, "numObjects": 0_i64, "millis": 0});
        };
        let (size, count) = match fields.doc("keyPattern")? {
            None => {
                let stats = catalog::stats(&reader, entry.id)?;
                (stats.bytes, stats.count)
            }
            Some(pattern) => {
                let range = KeyRange::parse(&fields, pattern)?;
                range.measure(&reader, &entry)?
            }
        };
        Ok(doc! {"size": size, "numObjects": count, "millis": 0})
    }

    /// `dbHash`: a stable hash of every collection's documents in `_id` order, to compare
    /// replicas.
    pub(crate) fn db_hash(&self, db: &str, command: &Document) -> Result<Document, CommandError> {
        let fields = Fields::new(command, "dbHash");
        let only: Option<Vec<&str>> = fields
            .array("collections")?
            .map(|names| names.iter().filter_map(Bson::as_str).collect());
        let reader = Direct(self.kv.as_ref());
        let mut collections = Document::new();
        let mut uuids = Document::new();
        let mut overall = Fnv128::new();
        for entry in catalog::list_database(&reader, db)? {
            let name = entry.coll_name().to_owned();
            if only
                .as_ref()
                .is_some_and(|only| !only.contains(&name.as_str()))
            {
                continue;
            }
            let hash = collection_hash(&reader, &entry)?;
            overall.update(name.as_bytes());
            overall.update(&[0]);
            overall.update(hash.as_bytes());
            collections.insert(name.clone(), hash);
            uuids.insert(name, entry.uuid.to_bson());
        }
        Ok(doc! {"collections": collections, "uuids": uuids, "md5": overall.hex(), "timeMillis": 0})
    }

    /// `_shoalCountRange {ns, keyPattern, min, max}`: documents whose shard key lies in
    /// `[min, max)`.
    pub(crate) fn count_range(&self, command: &Document) -> Result<Document, CommandError> {
        let fields = Fields::new(command, "_shoalCountRange");
        let ns = match (fields.str("ns")?, command.get("_shoalCountRange")) {
            (Some(ns), _) => ns,
            (None, Some(Bson::String(ns))) => ns.as_str(),
            (None, _) => return Err(fields.missing("ns")),
        };
        let ns = Namespace::parse(ns)?.to_string();
        let pattern = fields
            .doc("keyPattern")?
            .ok_or_else(|| fields.missing("keyPattern"))?;
        let range = KeyRange::parse(&fields, pattern)?;
        let reader = Direct(self.kv.as_ref());
        let count = match catalog::lookup(&reader, &ns)? {
            Some(entry) => range.measure(&reader, &entry)?.1,
            None => 0,
        };
        Ok(doc! {"n": count})
    }
}

/// The most shard-key values `_shoalSplitPoint` sorts to find a median.
pub const SPLIT_POINT_KEYS_MAX: usize = 2_000_000;

impl Engine {
    /// `_shoalSplitPoint: ns, keyPattern, min, max`: the median shard key of the documents in
    /// `[min, max)` (`split` by `find` or `bounds` splits a chunk there), or `null` when the range
    /// holds fewer than two distinct keys and cannot be split.
    pub(crate) fn split_point(&self, command: &Document) -> Result<Document, CommandError> {
        let fields = Fields::new(command, "_shoalSplitPoint");
        let ns = match command.get("_shoalSplitPoint") {
            Some(Bson::String(ns)) => ns.as_str(),
            _ => return Err(fields.missing("_shoalSplitPoint")),
        };
        let ns = Namespace::parse(ns)?.to_string();
        let pattern = fields
            .doc("keyPattern")?
            .ok_or_else(|| fields.missing("keyPattern"))?;
        let range = KeyRange::parse(&fields, pattern)?;
        let reader = Direct(self.kv.as_ref());
        let Some(entry) = catalog::lookup(&reader, &ns)? else {
            return Ok(doc! {"splitPoint": Bson::Null});
        };
        let mut keys = range.keys(&reader, &entry)?;
        keys.sort_by(compare_key_values);
        Ok(doc! {"splitPoint": median_split(&keys, &range.min).map_or(Bson::Null, Bson::Document)})
    }
}

/// The most ranges one `_shoalRangeSizes` call measures.
pub const RANGE_SIZES_MAX: usize = 100_000;

impl Engine {
    /// `_shoalRangeSizes: ns, keyPattern, ranges: [[min, max], ...]` (sorted, disjoint): the bytes
    /// and documents of the collection in each range, in one scan. The config server's
    /// auto-splitter finds chunks grown past the maximum size with it.
    pub(crate) fn range_sizes(&self, command: &Document) -> Result<Document, CommandError> {
        let fields = Fields::new(command, "_shoalRangeSizes");
        let ns = match command.get("_shoalRangeSizes") {
            Some(Bson::String(ns)) => Namespace::parse(ns)?.to_string(),
            _ => return Err(fields.missing("_shoalRangeSizes")),
        };
        let pattern = ShardKeyPattern::parse(
            fields
                .doc("keyPattern")?
                .ok_or_else(|| fields.missing("keyPattern"))?,
        )?;
        let ranges = parse_ranges(command, &pattern)?;
        let mut sizes = vec![(0i64, 0i64); ranges.len()];
        let reader = Direct(self.kv.as_ref());
        if let Some(entry) = catalog::lookup(&reader, &ns)? {
            let (start, end) = collection_range(entry.id);
            scan_documents(&reader, &start, &end, |_, document, size| {
                let key = pattern.extract(&document)?;
                // The last range whose min is <= key; it holds the key if key < its max.
                let at = ranges.partition_point(|(min, _)| {
                    compare_key_values(min, &key) != std::cmp::Ordering::Greater
                });
                if let Some(index) = at.checked_sub(1)
                    && compare_key_values(&key, &ranges[index].1) == std::cmp::Ordering::Less
                {
                    sizes[index].0 += i64::try_from(size).unwrap_or(i64::MAX);
                    sizes[index].1 += 1;
                }
                Ok::<_, CommandError>(Step::Next)
            })?;
        }
        let sizes: Vec<Bson> = sizes
            .into_iter()
            .map(|(bytes, count)| Bson::Document(doc! {"bytes": bytes, "count": count}))
            .collect();
        Ok(doc! {"sizes": sizes})
    }
}

fn parse_ranges(
    command: &Document,
    pattern: &ShardKeyPattern,
) -> Result<Vec<(Document, Document)>, CommandError> {
    let raw = command
        .get_array("ranges")
        .map_err(|_| CommandError::missing_field("_shoalRangeSizes", "ranges"))?;
    if raw.len() > RANGE_SIZES_MAX {
        return Err(CommandError::bad_value(format!(
            "at most {RANGE_SIZES_MAX} ranges per call"
        )));
    }
    let mut ranges: Vec<(Document, Document)> = Vec::with_capacity(raw.len());
    for range in raw {
        let pair = range.as_array().filter(|pair| pair.len() == 2);
        let (Some(Bson::Document(min)), Some(Bson::Document(max))) =
            (pair.and_then(|p| p.first()), pair.and_then(|p| p.get(1)))
        else {
            return Err(CommandError::bad_value("each range must be [min, max]"));
        };
        pattern.validate_key_shape(min)?;
        pattern.validate_key_shape(max)?;
        if let Some((_, previous_max)) = ranges.last()
            && compare_key_values(previous_max, min) == std::cmp::Ordering::Greater
        {
            return Err(CommandError::bad_value(
                "ranges must be sorted and disjoint",
            ));
        }
        ranges.push((min.clone(), max.clone()));
    }
    Ok(ranges)
}

/// The median of sorted `keys`, moved up past keys equal to `min` so both halves are non-empty.
fn median_split(keys: &[Document], min: &Document) -> Option<Document> {
    let middle = keys.len() / 2;
    keys[middle.min(keys.len())..]
        .iter()
        .find(|key| compare_key_values(key, min) == std::cmp::Ordering::Greater)
        .cloned()
}

/// A shard-key range `[min, max)` under a key pattern.
struct KeyRange {
    pattern: ShardKeyPattern,
    min: Document,
    max: Document,
}

impl KeyRange {
    fn parse(fields: &Fields<'_>, pattern: &Document) -> Result<KeyRange, CommandError> {
        let pattern = ShardKeyPattern::parse(pattern)?;
        let min = fields
            .doc("min")?
            .cloned()
            .unwrap_or_else(|| pattern.global_min());
        let max = fields
            .doc("max")?
            .cloned()
            .unwrap_or_else(|| pattern.global_max());
        pattern.validate_key_shape(&min)?;
        pattern.validate_key_shape(&max)?;
        Ok(KeyRange { pattern, min, max })
    }

    /// The shard keys of the collection's documents in the range.
    fn keys(
        &self,
        reader: &dyn Reader,
        entry: &CollectionEntry,
    ) -> Result<Vec<Document>, CommandError> {
        let (start, end) = collection_range(entry.id);
        let mut keys = Vec::new();
        scan_documents(reader, &start, &end, |_, document, _| {
            let key = self.pattern.extract(&document)?;
            let in_range = compare_key_values(&self.min, &key) != std::cmp::Ordering::Greater
                && compare_key_values(&key, &self.max) == std::cmp::Ordering::Less;
            if in_range {
                if keys.len() >= SPLIT_POINT_KEYS_MAX {
                    return Err(CommandError::new(
                        ErrorCode::ILLEGAL_OPERATION,
                        format!(
                            "the chunk holds more than {SPLIT_POINT_KEYS_MAX} documents; split it with 'middle'"
                        ),
                    ));
                }
                keys.push(key);
            }
            Ok::<_, CommandError>(Step::Next)
        })?;
        Ok(keys)
    }

    /// Total bytes and number of the collection's documents in the range.
    fn measure(
        &self,
        reader: &dyn Reader,
        entry: &CollectionEntry,
    ) -> Result<(i64, i64), CommandError> {
        let (start, end) = collection_range(entry.id);
        let (mut bytes, mut count) = (0i64, 0i64);
        scan_documents(reader, &start, &end, |_, document, size| {
            let key = self.pattern.extract(&document)?;
            let in_range = compare_key_values(&self.min, &key) != std::cmp::Ordering::Greater
                && compare_key_values(&key, &self.max) == std::cmp::Ordering::Less;
            if in_range {
                bytes += i64::try_from(size).unwrap_or(i64::MAX);
                count += 1;
            }
            Ok::<_, CommandError>(Step::Next)
        })?;
        Ok((bytes, count))
    }
}

/// The hash of one collection's stored bytes in key (`_id`) order.
fn collection_hash(reader: &dyn Reader, entry: &CollectionEntry) -> Result<String, CommandError> {
    let (mut cursor, end) = collection_range(entry.id);
    let mut hash = Fnv128::new();
    loop {
        let page = reader.scan_page(Space::Docs, &cursor, &end)?;
        for (_, value) in &page.pairs {
            // BSON documents carry their own length, so concatenation is unambiguous.
            hash.update(value);
        }
        match page.next {
            Some(next) => cursor = next,
            None => return Ok(hash.hex()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_split_points_leave_both_halves_non_empty() {
        let keys: Vec<Document> = [1, 1, 1, 2, 3].iter().map(|k| doc! {"k": k}).collect();
        assert_eq!(median_split(&keys, &doc! {"k": 0}), Some(doc! {"k": 1}));
        // The median equals the chunk's min: move up to the next distinct key.
        assert_eq!(median_split(&keys, &doc! {"k": 1}), Some(doc! {"k": 2}));
        let same: Vec<Document> = [7, 7, 7].iter().map(|k| doc! {"k": k}).collect();
        assert_eq!(median_split(&same, &doc! {"k": 7}), None);
        assert_eq!(median_split(&[], &doc! {"k": 0}), None);
    }

    #[test]
    fn split_point_command_finds_the_median_key() {
        let engine = Engine::with_kv(std::sync::Arc::new(crate::kv::MemKv::new())).unwrap();
        let docs: Vec<Bson> = (0..100)
            .map(|k| Bson::Document(doc! {"_id": k, "k": k}))
            .collect();
        engine.execute("d", &doc! {"insert": "c", "documents": docs});
        let reply = engine.execute(
            "admin",
            &doc! {"_shoalSplitPoint": "d.c", "keyPattern": {"k": 1}, "min": {"k": 10}, "max": {"k": 30}},
        );
        assert_eq!(reply.get_document("splitPoint").unwrap(), &doc! {"k": 20});
        let sizes = engine.execute(
            "admin",
            &doc! {
                "_shoalRangeSizes": "d.c", "keyPattern": {"k": 1},
                "ranges": [[{"k": 0}, {"k": 10}], [{"k": 50}, {"k": 60}], [{"k": 95}, {"k": 200}]],
            },
        );
        let counts: Vec<i64> = sizes
            .get_array("sizes")
            .unwrap()
            .iter()
            .map(|s| s.as_document().unwrap().get_i64("count").unwrap())
            .collect();
        assert_eq!(counts, [10, 10, 5]);
        let unsorted = engine.execute(
            "admin",
            &doc! {"_shoalRangeSizes": "d.c", "keyPattern": {"k": 1}, "ranges": [[{"k": 5}, {"k": 9}], [{"k": 0}, {"k": 3}]]},
        );
        assert_eq!(unsorted.get_i32("code").unwrap(), 2);
        let missing = engine.execute(
            "admin",
            &doc! {"_shoalSplitPoint": "d.none", "keyPattern": {"k": 1}},
        );
        assert_eq!(missing.get("splitPoint"), Some(&Bson::Null));
    }
}
