//! The on-disk layout: which key holds what, and how catalog records are encoded.
//!
//! Catalog space: `c<db>.<coll>` -> BSON `{ns, uuid, id, created, indexes, nextIndexId}` (the
//! secondary indexes' definitions, see the index module); `n` -> the last collection id
//! handed out (u64 big endian); `s<id>` -> the collection's document count and data bytes (two
//! i64 big endian), maintained in the same batch as the documents so they never drift.
//! Docs space: `d<id: u64 BE><keycode(_id)>` -> the raw BSON document. Ids are never reused, so
//! a dropped collection's range can be deleted lazily without touching a newer incarnation, and
//! big-endian ids keep one collection's documents contiguous and in `_id` order. Index entries
//! live in the docs space too, under `x<id>` (see the index module), so a document and its
//! entries are written in one batch.

use bson::{Bson, Document, doc};
use shoal_common::CollectionUuid;

use crate::{error::StoreError, index::IndexSpec, kv::prefix_end, validation::Validation};

/// A collection's internal numeric id: the prefix of its documents' keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionId(pub u64);

const DOC_TAG: u8 = b'd';
const CATALOG_TAG: u8 = b'c';
const STATS_TAG: u8 = b's';
/// The key of the collection id counter.
pub(crate) const COUNTER_KEY: &[u8] = b"n";

/// The key prefix of every document of `id`.
pub(crate) fn collection_prefix(id: CollectionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(DOC_TAG);
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

/// `[start, end)` covering every document of `id`.
pub(crate) fn collection_range(id: CollectionId) -> (Vec<u8>, Vec<u8>) {
    let start = collection_prefix(id);
    // A prefix of `d` plus eight bytes always has an end unless the id is u64::MAX; ids are
    // allocated from 1 upwards so that cannot happen, but fall back to the next tag anyway.
    let end = prefix_end(&start).unwrap_or_else(|| vec![DOC_TAG + 1]);
    (start, end)
}

/// The first key after every key starting with `prefix` (`prefix` plus a byte when it is all
/// 0xff, which the tagged prefixes of this layout never are).
pub(crate) fn prefix_after(prefix: &[u8]) -> Vec<u8> {
    prefix_end(prefix).unwrap_or_else(|| {
        let mut end = prefix.to_vec();
        end.push(u8::MAX);
        end
    })
}

/// The key of the document whose `_id` is `id_value` in collection `id`.
pub(crate) fn doc_key(id: CollectionId, id_value: &Bson) -> Vec<u8> {
    let mut key = collection_prefix(id);
    shoal_query::keycode::encode(id_value, &mut key);
    key
}

/// The catalog key of namespace `ns` (`db.coll`).
pub(crate) fn catalog_key(ns: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(ns.len() + 1);
    key.push(CATALOG_TAG);
    key.extend_from_slice(ns.as_bytes());
    key
}

/// `[start, end)` covering the catalog entries of database `db` (database names have no dot,
/// so `c<db>.` is an exact prefix).
pub(crate) fn database_range(db: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = catalog_key(db);
    start.push(b'.');
    let mut end = catalog_key(db);
    end.push(b'.' + 1);
    (start, end)
}

/// `[start, end)` covering every catalog entry.
pub(crate) fn all_collections_range() -> (Vec<u8>, Vec<u8>) {
    (vec![CATALOG_TAG], vec![CATALOG_TAG + 1])
}

/// The key of a collection's statistics record.
pub(crate) fn stats_key(id: CollectionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(STATS_TAG);
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

/// A collection as the catalog records it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CollectionEntry {
    /// `db.coll`.
    pub ns: String,
    /// Fixed at creation.
    pub uuid: CollectionUuid,
    /// The key prefix of its documents.
    pub id: CollectionId,
    /// Creation time.
    pub created: bson::DateTime,
    /// Secondary indexes (`_id_` is implicit), in creation order.
    pub indexes: Vec<IndexSpec>,
    /// The id the next created index gets.
    pub next_index_id: u64,
    /// Schema validation options.
    pub validation: Validation,
    /// The shard's ownership of this collection when it is sharded (see `sharding.rs`).
    pub sharding: Option<std::sync::Arc<crate::sharding::ShardingState>>,
}

impl CollectionEntry {
    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut record = doc! {
            "ns": self.ns.clone(),
            "uuid": self.uuid.to_bson(),
            // Ids stay far below i64::MAX (one per created collection).
            "id": self.id.0 as i64,
            "created": self.created,
            "indexes": self.indexes.iter().map(IndexSpec::to_record).collect::<Vec<_>>(),
            "nextIndexId": i64::try_from(self.next_index_id).unwrap_or(i64::MAX),
        };
        if !self.validation.is_empty() {
            record.insert("options", self.validation.to_record());
        }
        if let Some(sharding) = &self.sharding {
            record.insert("sharding", sharding.to_document());
        }
        encode_document(&record)
    }

    /// Reads a stored entry; `key` is for the error message.
    pub fn decode(key: &[u8], bytes: &[u8]) -> Result<CollectionEntry, StoreError> {
        let record = decode_document(key, bytes)?;
        let bad = |what: &str| StoreError::corrupt(key, format!("catalog entry: {what}"));
        let ns = record.get_str("ns").map_err(|_| bad("ns"))?.to_owned();
        let uuid = record
            .get("uuid")
            .and_then(CollectionUuid::from_bson)
            .ok_or_else(|| bad("uuid"))?;
        let id = record.get_i64("id").map_err(|_| bad("id"))?;
        let id = u64::try_from(id).map_err(|_| bad("negative id"))?;
        let created = *record.get_datetime("created").map_err(|_| bad("created"))?;
        // Entries written before indexes existed have neither field.
        let mut indexes = Vec::new();
        if let Ok(records) = record.get_array("indexes") {
            for index in records {
                let index = index.as_document().ok_or_else(|| bad("index record"))?;
                indexes.push(IndexSpec::from_record(index).map_err(|why| bad(&why))?);
            }
        }
        let next_index_id = match record.get_i64("nextIndexId") {
            Ok(next) => u64::try_from(next).map_err(|_| bad("negative nextIndexId"))?,
            Err(_) => 1,
        };
        let validation = match record.get_document("options") {
            Ok(options) => Validation::from_record(options).map_err(|why| bad(&why))?,
            Err(_) => Validation::default(),
        };
        let sharding = match record.get_document("sharding") {
            Ok(state) => Some(std::sync::Arc::new(
                crate::sharding::ShardingState::from_document(state)
                    .map_err(|why| bad(&why.errmsg))?,
            )),
            Err(_) => None,
        };
        Ok(CollectionEntry {
            ns,
            uuid,
            id: CollectionId(id),
            created,
            indexes,
            next_index_id,
            validation,
            sharding,
        })
    }

    /// The collection name (the part after the first dot).
    pub fn coll_name(&self) -> &str {
        self.ns
            .split_once('.')
            .map_or(self.ns.as_str(), |(_, coll)| coll)
    }
}

/// A collection's document count and data size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CollStats {
    /// Number of documents.
    pub count: i64,
    /// Sum of the documents' BSON sizes.
    pub bytes: i64,
}

impl CollStats {
    /// The stored form: two big-endian i64.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.bytes.to_be_bytes());
        out
    }

    /// Reads a stored record.
    pub fn decode(key: &[u8], bytes: &[u8]) -> Result<CollStats, StoreError> {
        let (count, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| StoreError::corrupt(key, "short stats record"))?;
        let bytes_field: [u8; 8] = rest
            .try_into()
            .map_err(|_| StoreError::corrupt(key, "stats record is not 16 bytes"))?;
        Ok(CollStats {
            count: i64::from_be_bytes(*count),
            bytes: i64::from_be_bytes(bytes_field),
        })
    }
}

/// Serializes a document. Writing BSON into a `Vec` only fails for documents that cannot exist
/// in memory (keys with NUL bytes), which the bson crate already refuses to build from the wire.
pub(crate) fn encode_document(document: &Document) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Err(err) = document.to_writer(&mut bytes) {
        tracing::error!(error = %err, "a document failed to serialize");
        bytes.clear();
    }
    bytes
}

/// Reads a stored document; corrupt bytes are a storage invariant violation.
pub(crate) fn decode_document(key: &[u8], bytes: &[u8]) -> Result<Document, StoreError> {
    Document::from_reader(bytes).map_err(|err| StoreError::corrupt(key, err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_entries_round_trip() {
        let entry = CollectionEntry {
            ns: "db.a.b".into(),
            uuid: CollectionUuid::random(),
            id: CollectionId(7),
            created: bson::DateTime::from_millis(1_000),
            indexes: Vec::new(),
            next_index_id: 3,
            validation: Validation::default(),
            sharding: None,
        };
        let back = CollectionEntry::decode(b"k", &entry.encode()).unwrap();
        assert_eq!(back, entry);
        assert_eq!(back.coll_name(), "a.b");
        assert!(CollectionEntry::decode(b"k", b"garbage").is_err());
        let stats = CollStats {
            count: 3,
            bytes: 99,
        };
        assert_eq!(CollStats::decode(b"k", &stats.encode()).unwrap(), stats);
        assert!(CollStats::decode(b"k", b"short").is_err());
    }

    #[test]
    fn collection_ranges_nest() {
        let (start, end) = collection_range(CollectionId(1));
        let key = doc_key(CollectionId(1), &Bson::Int32(5));
        assert!(start <= key && key < end);
        let other = doc_key(CollectionId(2), &Bson::Int32(5));
        assert!(other >= end);
        let (db_start, db_end) = database_range("db");
        let ns = catalog_key("db.x");
        assert!(db_start <= ns && ns < db_end);
        assert!(catalog_key("db2.x") >= db_end || catalog_key("db2.x") < db_start);
    }
}
