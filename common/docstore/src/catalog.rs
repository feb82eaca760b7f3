//! The collection catalog: namespace -> collection id, uuid and creation time, plus each
//! collection's running statistics. All catalog changes go through the writer-serialized paths
//! (a [`Txn`] or a drop batch) in the same atomic batch as the documents they describe.

use shoal_common::CollectionUuid;

use crate::{
    error::StoreError,
    keys::{
        COUNTER_KEY, CollStats, CollectionEntry, CollectionId, all_collections_range, catalog_key,
        database_range, stats_key,
    },
    kv::{Space, WriteBatch},
    txn::{Reader, Txn},
};

/// The catalog entry of `ns`, if the collection exists.
pub(crate) fn lookup(reader: &dyn Reader, ns: &str) -> Result<Option<CollectionEntry>, StoreError> {
    let key = catalog_key(ns);
    match reader.get(Space::Catalog, &key)? {
        Some(bytes) => CollectionEntry::decode(&key, &bytes).map(Some),
        None => Ok(None),
    }
}

/// The statistics of a collection (zero before its first write).
pub(crate) fn stats(reader: &dyn Reader, id: CollectionId) -> Result<CollStats, StoreError> {
    let key = stats_key(id);
    match reader.get(Space::Catalog, &key)? {
        Some(bytes) => CollStats::decode(&key, &bytes),
        None => Ok(CollStats::default()),
    }
}

/// Stages the creation of `ns` with a fresh id; the caller has checked that it does not exist.
pub(crate) fn create(txn: &mut Txn<'_>, ns: &str) -> Result<CollectionEntry, StoreError> {
    let last = match txn.get(Space::Catalog, COUNTER_KEY)? {
        Some(bytes) => {
            let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                StoreError::corrupt(COUNTER_KEY, "collection id counter is not 8 bytes")
            })?;
            u64::from_be_bytes(raw)
        }
        None => 0,
    };
    let id = CollectionId(last + 1);
    let entry = CollectionEntry {
        ns: ns.to_owned(),
        uuid: CollectionUuid::random(),
        id,
        created: shoal_common::determinism::now(),
        indexes: Vec::new(),
        next_index_id: 1,
        validation: crate::validation::Validation::default(),
        sharding: None,
    };
    txn.put(
        Space::Catalog,
        COUNTER_KEY.to_vec(),
        id.0.to_be_bytes().to_vec(),
    );
    txn.put(Space::Catalog, catalog_key(ns), entry.encode());
    Ok(entry)
}

/// The entry of `ns`, staging its creation when missing (implicit creation by a write).
pub(crate) fn ensure(txn: &mut Txn<'_>, ns: &str) -> Result<CollectionEntry, StoreError> {
    match lookup(txn, ns)? {
        Some(entry) => Ok(entry),
        None => {
            tracing::debug!(ns, "creating collection implicitly");
            create(txn, ns)
        }
    }
}

/// Adds the removal of a collection (entry, statistics, every document and index entry) to
/// `batch`.
pub(crate) fn drop_into(batch: &mut WriteBatch, entry: &CollectionEntry) {
    let (start, end) = crate::keys::collection_range(entry.id);
    batch.delete(Space::Catalog, catalog_key(&entry.ns));
    batch.delete(Space::Catalog, stats_key(entry.id));
    batch.delete_range(Space::Docs, start, end);
    let (start, end) = crate::index::collection_indexes_range(entry.id);
    batch.delete_range(Space::Docs, start, end);
}

/// Every collection of database `db`, by name.
pub(crate) fn list_database(
    reader: &dyn Reader,
    db: &str,
) -> Result<Vec<CollectionEntry>, StoreError> {
    let (start, end) = database_range(db);
    list_range(reader, start, end)
}

/// Every collection of every database, by namespace.
pub(crate) fn list_all(reader: &dyn Reader) -> Result<Vec<CollectionEntry>, StoreError> {
    let (start, end) = all_collections_range();
    list_range(reader, start, end)
}

fn list_range(
    reader: &dyn Reader,
    start: Vec<u8>,
    end: Vec<u8>,
) -> Result<Vec<CollectionEntry>, StoreError> {
    let mut entries = Vec::new();
    let mut cursor = start;
    loop {
        let page = reader.scan_page(Space::Catalog, &cursor, &end)?;
        for (key, value) in &page.pairs {
            entries.push(CollectionEntry::decode(key, value)?);
        }
        match page.next {
            Some(next) => cursor = next,
            None => return Ok(entries),
        }
    }
}
