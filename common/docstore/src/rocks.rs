//! The production [`Kv`]: RocksDB with one column family per [`Space`] ("catalog", "docs"), as
//! the design notes prescribe (a few column families, collection-prefixed keys), so a
//! collection or a chunk is one contiguous key range and a drop is one range delete.

use std::path::Path;

use rocksdb::{
    AsColumnFamilyRef, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options,
    ReadOptions,
};

use crate::{
    error::StoreError,
    kv::{Kv, KvPair, Space, WriteBatch, WriteOp},
};

/// RocksDB-backed storage.
pub struct RocksKv {
    db: DB,
}

impl std::fmt::Debug for RocksKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksKv")
            .field("path", &self.db.path())
            .finish()
    }
}

fn backend(err: rocksdb::Error) -> StoreError {
    StoreError::Backend(err.into_string())
}

impl RocksKv {
    /// Opens (creating if needed) the database at `dir` with its column families.
    pub fn open(dir: &Path) -> Result<RocksKv, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families = Space::ALL.iter().map(|space| {
            let mut family = Options::default();
            // The build enables only lz4; RocksDB's default (snappy) would silently mean none.
            family.set_compression_type(DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(space.name(), family)
        });
        let db = DB::open_cf_descriptors(&options, dir, families).map_err(backend)?;
        Ok(RocksKv { db })
    }

    /// The handle of `space`'s column family. The concrete type differs between rocksdb's
    /// single- and multi-threaded column family modes (feature unification may pick either), so
    /// only the trait is named.
    fn family(&self, space: Space) -> Result<impl AsColumnFamilyRef + '_, StoreError> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StoreError::Backend(format!("column family {} missing", space.name())))
    }
}

impl Kv for RocksKv {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let family = self.family(space)?;
        self.db.get_cf(&family, key).map_err(backend)
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KvPair>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let family = self.family(space)?;
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end.to_vec());
        let iter = self.db.iterator_cf_opt(
            &family,
            read,
            IteratorMode::From(start, rocksdb::Direction::Forward),
        );
        let mut pairs = Vec::new();
        for item in iter.take(limit) {
            let (key, value) = item.map_err(backend)?;
            pairs.push((key.into_vec(), value.into_vec()));
        }
        Ok(pairs)
    }

    fn scan_reverse(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KvPair>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let family = self.family(space)?;
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(start.to_vec());
        read.set_iterate_upper_bound(end.to_vec());
        // With an upper bound set, `End` seeks to the last key below it.
        let iter = self.db.iterator_cf_opt(&family, read, IteratorMode::End);
        let mut pairs = Vec::new();
        for item in iter.take(limit) {
            let (key, value) = item.map_err(backend)?;
            pairs.push((key.into_vec(), value.into_vec()));
        }
        Ok(pairs)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                WriteOp::Put { space, key, value } => {
                    rocks_batch.put_cf(&self.family(space)?, key, value);
                }
                WriteOp::Delete { space, key } => {
                    rocks_batch.delete_cf(&self.family(space)?, key);
                }
                WriteOp::DeleteRange { space, start, end } => {
                    rocks_batch.delete_range_cf(&self.family(space)?, start, end);
                }
            }
        }
        let mut write = rocksdb::WriteOptions::default();
        write.set_sync(sync);
        self.db.write_opt(rocks_batch, &write).map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bson::doc;

    use super::*;
    use crate::Engine;

    #[test]
    fn rocks_kv_scans_writes_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = RocksKv::open(dir.path()).unwrap();
            let mut batch = WriteBatch::new();
            for i in 0u8..10 {
                batch.put(Space::Docs, vec![b'd', i], vec![i]);
            }
            batch.put(Space::Catalog, b"k".to_vec(), b"v".to_vec());
            kv.write(batch, true).unwrap();
            let page = kv.scan(Space::Docs, &[b'd', 2], &[b'd', 8], 3).unwrap();
            let keys: Vec<u8> = page.iter().map(|(k, _)| k[1]).collect();
            assert_eq!(keys, vec![2, 3, 4]);
            let back = kv
                .scan_reverse(Space::Docs, &[b'd', 2], &[b'd', 8], 3)
                .unwrap();
            let keys: Vec<u8> = back.iter().map(|(k, _)| k[1]).collect();
            assert_eq!(keys, vec![7, 6, 5]);
            let mut batch = WriteBatch::new();
            batch.delete_range(Space::Docs, vec![b'd', 3], vec![b'd', 7]);
            batch.delete(Space::Docs, vec![b'd', 0]);
            kv.write(batch, false).unwrap();
            assert_eq!(kv.get(Space::Docs, b"k").unwrap(), None);
        }
        let kv = RocksKv::open(dir.path()).unwrap();
        let all = kv.scan(Space::Docs, b"d", b"e", 100).unwrap();
        let keys: Vec<u8> = all.iter().map(|(k, _)| k[1]).collect();
        assert_eq!(keys, vec![1, 2, 7, 8, 9]);
        assert_eq!(kv.get(Space::Catalog, b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn engine_persists_on_rocks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(dir.path()).unwrap();
            let reply = engine.execute(
                "db",
                &doc! {"insert": "c", "documents": [{"_id": 1}, {"_id": 2}]},
            );
            assert_eq!(reply.get_i32("n").unwrap(), 2, "{reply}");
        }
        let engine = Engine::with_kv(Arc::new(RocksKv::open(dir.path()).unwrap())).unwrap();
        let reply = engine.execute("db", &doc! {"count": "c"});
        assert_eq!(reply.get_i32("n").unwrap(), 2, "{reply}");
        let reply = engine.execute("db", &doc! {"find": "c", "filter": {"_id": 2}});
        let batch = reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap();
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn indexes_survive_a_restart_on_rocks() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<bson::Document> = (0..50)
            .map(|i| doc! {"_id": i, "f": format!("v{i}"), "t": [i % 4, 9]})
            .collect();
        {
            let engine = Engine::open(dir.path()).unwrap();
            engine.execute("db", &doc! {"insert": "c", "documents": docs});
            let reply = engine.execute(
                "db",
                &doc! {"createIndexes": "c", "indexes": [{"key": {"f": -1}, "unique": true}, {"key": {"t": 1}}]},
            );
            assert_eq!(reply.get_i32("numIndexesAfter").unwrap(), 3, "{reply}");
        }
        let engine = Engine::open(dir.path()).unwrap();
        let reply = engine.execute(
            "db",
            // "v45".."v49" and "v5".."v9", in order straight from the descending index.
            &doc! {"explain": {"find": "c", "filter": {"f": {"$gte": "v45"}}, "sort": {"f": 1}}},
        );
        let stats = reply.get_document("executionStats").unwrap();
        assert_eq!(stats.get_i32("nReturned").unwrap(), 10, "{reply}");
        assert_eq!(stats.get_i32("totalKeysExamined").unwrap(), 10, "{reply}");
        let found = engine.execute(
            "db",
            &doc! {"find": "c", "filter": {"t": 2}, "sort": {"f": -1}},
        );
        let batch = found
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap();
        assert_eq!(batch.len(), 12);
        let reply = engine.execute("db", &doc! {"insert": "c", "documents": [{"f": "v7"}]});
        let errors = reply.get_array("writeErrors").unwrap();
        assert_eq!(
            errors[0].as_document().unwrap().get_i32("code").unwrap(),
            11000
        );
    }
}
