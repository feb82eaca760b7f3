//! The production [`Kv`]: RocksDB with one column family per [`Space`] ("catalog", "docs"), as
//! the design notes prescribe (a few column families, collection-prefixed keys), so a
//! collection or a chunk is one contiguous key range and a drop is one range delete.
//!
//! Physical backups start here: [`RocksKv::checkpoint`] makes a RocksDB checkpoint (a
//! consistent copy of every column family, SST files hard-linked when on the same file system),
//! and [`RocksKv::open_read_only`] reads one back without changing its files.

use std::path::Path;

use rocksdb::{
    AsColumnFamilyRef, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options,
    ReadOptions, checkpoint::Checkpoint,
};

use crate::{
    error::StoreError,
    kv::{Kv, KvPair, KvRange, PairVisitor, Space, WriteBatch, WriteOp},
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

    /// Opens the database at `dir` (a checkpoint, typically) for reading only: nothing in `dir`
    /// is written, and its write-ahead log is replayed in memory. Writes fail.
    pub fn open_read_only(dir: &Path) -> Result<RocksKv, StoreError> {
        let options = Options::default();
        let names = Space::ALL.iter().map(|space| space.name());
        let db = DB::open_cf_for_read_only(&options, dir, names, false).map_err(backend)?;
        Ok(RocksKv { db })
    }

    /// Writes a checkpoint of the whole database (every column family, as of one instant) into
    /// `dir`, which must not exist; its parent must. Memtables are flushed first, so the
    /// checkpoint is mostly immutable SST files, hard-linked when `dir` is on the same file
    /// system as the database. Returns the checkpoint's files, sorted by name.
    pub fn checkpoint(&self, dir: &Path) -> Result<Vec<CheckpointFile>, StoreError> {
        if dir.exists() {
            return Err(StoreError::Backend(format!(
                "checkpoint directory {} already exists",
                dir.display()
            )));
        }
        Checkpoint::new(&self.db)
            .and_then(|checkpoint| checkpoint.create_checkpoint(dir))
            .map_err(backend)?;
        list_files(dir)
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

/// One file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFile {
    /// The file name inside the checkpoint directory (checkpoints have no subdirectories).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The regular files of `dir`, sorted by name. A checkpoint holds no subdirectories; finding
/// one means `dir` is not a checkpoint, which is an error rather than something to skip.
fn list_files(dir: &Path) -> Result<Vec<CheckpointFile>, StoreError> {
    let io = |error: std::io::Error| {
        StoreError::Backend(format!("listing checkpoint {}: {error}", dir.display()))
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let metadata = entry.metadata().map_err(io)?;
        let name = entry.file_name().into_string().map_err(|name| {
            StoreError::Backend(format!("checkpoint file name {name:?} is not UTF-8"))
        })?;
        if !metadata.is_file() {
            return Err(StoreError::Backend(format!(
                "checkpoint {} holds {name}, which is not a regular file",
                dir.display()
            )));
        }
        files.push(CheckpointFile {
            name,
            size: metadata.len(),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
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

    fn visit_consistent(
        &self,
        ranges: &[KvRange],
        frozen: &mut dyn FnMut(),
        visit: &mut PairVisitor<'_>,
    ) -> Result<(), StoreError> {
        // A RocksDB snapshot pins one sequence number: the visit sees the store as of here,
        // whatever is written meanwhile.
        let snapshot = self.db.snapshot();
        frozen();
        for (space, start, end) in ranges {
            if start >= end {
                continue;
            }
            let family = self.family(*space)?;
            let mut read = ReadOptions::default();
            read.set_iterate_upper_bound(end.clone());
            // A full scan would otherwise evict the working set from the block cache.
            read.fill_cache(false);
            let iter = snapshot.iterator_cf_opt(
                &family,
                read,
                IteratorMode::From(start, rocksdb::Direction::Forward),
            );
            for item in iter {
                let (key, value) = item.map_err(backend)?;
                visit(*space, &key, &value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bson::doc;

    use super::*;
    use crate::Engine;

    /// A visit sees the store as of the moment `frozen` ran, although writes land while it
    /// goes on (a snapshot of a large member is read while the member keeps applying).
    #[test]
    fn a_consistent_visit_ignores_writes_made_during_it() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RocksKv::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0u8..100 {
            batch.put(Space::Docs, vec![b'd', i], vec![i]);
        }
        kv.write(batch, false).unwrap();
        let ranges = [(Space::Docs, b"d".to_vec(), b"e".to_vec())];
        let mut frozen_calls = 0;
        let mut seen = Vec::new();
        kv.visit_consistent(&ranges, &mut || frozen_calls += 1, &mut |_, key, value| {
            if seen.is_empty() {
                // Mid-visit: delete one visited later, add one, change one.
                let mut batch = WriteBatch::new();
                batch.delete(Space::Docs, vec![b'd', 50]);
                batch.put(Space::Docs, vec![b'd', 200], vec![0]);
                batch.put(Space::Docs, vec![b'd', 99], vec![0]);
                kv.write(batch, false).unwrap();
            }
            seen.push((key.to_vec(), value.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(frozen_calls, 1);
        assert_eq!(seen.len(), 100);
        assert_eq!(seen[50], (vec![b'd', 50], vec![50]));
        assert_eq!(seen[99], (vec![b'd', 99], vec![99]));
        assert_eq!(kv.scan(Space::Docs, b"d", b"e", 1000).unwrap().len(), 100);
    }

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
    fn checkpoints_are_consistent_copies_readable_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RocksKv::open(&dir.path().join("db")).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Space::Docs, b"a".to_vec(), b"1".to_vec());
        batch.put(Space::RaftMeta, b"applied".to_vec(), b"7".to_vec());
        kv.write(batch, false).unwrap();
        let target = dir.path().join("checkpoint");
        let files = kv.checkpoint(&target).unwrap();
        assert!(files.iter().any(|f| f.name == "CURRENT"), "{files:?}");
        assert!(files.iter().any(|f| f.name.ends_with(".sst")), "{files:?}");
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        // A write after the checkpoint is not in it.
        let mut batch = WriteBatch::new();
        batch.put(Space::Docs, b"b".to_vec(), b"2".to_vec());
        kv.write(batch, false).unwrap();
        let copy = RocksKv::open_read_only(&target).unwrap();
        assert_eq!(copy.get(Space::Docs, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(copy.get(Space::Docs, b"b").unwrap(), None);
        assert_eq!(
            copy.get(Space::RaftMeta, b"applied").unwrap(),
            Some(b"7".to_vec())
        );
        let mut batch = WriteBatch::new();
        batch.put(Space::Docs, b"c".to_vec(), b"3".to_vec());
        assert!(copy.write(batch, false).is_err());
        drop(copy);
        // Reading it changed nothing: the same files, the same sizes.
        assert_eq!(list_files(&target).unwrap(), files);
        assert!(kv.checkpoint(&target).is_err(), "an existing directory");
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
