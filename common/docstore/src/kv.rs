//! The storage seam: a small ordered key-value trait with atomic write batches.
//!
//! The command engine only needs point reads, bounded ascending range scans and atomic batches,
//! so storage sits behind [`Kv`]. [`MemKv`] serves unit tests and (later) deterministic
//! simulation, where RocksDB's background threads cannot be made deterministic; `RocksKv` is the
//! production backend. Scans return owned pairs in bounded pages rather than a borrowing
//! iterator so that no lock or RocksDB iterator is held while the engine evaluates filters.

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{Mutex, PoisonError},
};

use crate::error::StoreError;

/// A key space; RocksKv maps each to a column family of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Collection metadata, id counter and per-collection statistics.
    Catalog,
    /// Documents, keyed by collection id and encoded `_id`.
    Docs,
    /// The replicated log (the oplog), keyed by big-endian entry index.
    RaftLog,
    /// Replication state: the vote, the last purged and last applied entries, the membership
    /// and retryable-write session records.
    RaftMeta,
}

impl Space {
    /// Every space, in a fixed order.
    pub const ALL: [Space; 4] = [Space::Catalog, Space::Docs, Space::RaftLog, Space::RaftMeta];

    /// The column family name.
    pub fn name(self) -> &'static str {
        match self {
            Space::Catalog => "catalog",
            Space::Docs => "docs",
            Space::RaftLog => "raft_log",
            Space::RaftMeta => "raft_meta",
        }
    }

    fn index(self) -> usize {
        match self {
            Space::Catalog => 0,
            Space::Docs => 1,
            Space::RaftLog => 2,
            Space::RaftMeta => 3,
        }
    }
}

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Sets `key` to `value`.
    Put {
        /// The key space.
        space: Space,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key` (no error if absent).
    Delete {
        /// The key space.
        space: Space,
        /// The key.
        key: Vec<u8>,
    },
    /// Removes every key in `[start, end)`; lets a collection drop be one O(1) atomic write.
    DeleteRange {
        /// The key space.
        space: Space,
        /// First key removed.
        start: Vec<u8>,
        /// First key kept.
        end: Vec<u8>,
    },
}

/// Operations applied atomically and in order by [`Kv::write`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The operations, applied in order.
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp::Put { space, key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.ops.push(WriteOp::Delete { space, key });
    }

    /// Adds a range delete of `[start, end)`.
    pub fn delete_range(&mut self, space: Space, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(WriteOp::DeleteRange { space, start, end });
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An owned key-value pair returned by a scan.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Ordered key-value storage with atomic batches. Keys compare as unsigned bytes.
pub trait Kv: Send + Sync + 'static {
    /// The value of `key`, if present.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` pairs with `start <= key < end`, ascending. Fewer than `limit` pairs means
    /// the range is exhausted.
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KvPair>, StoreError>;

    /// Up to `limit` pairs with `start <= key < end`, descending (from the end of the range):
    /// index scans in the opposite direction of the index. Fewer than `limit` pairs means the
    /// range is exhausted.
    fn scan_reverse(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KvPair>, StoreError>;

    /// Applies every operation of `batch` atomically; with `sync`, durably (fsync of the log)
    /// before returning.
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError>;

    /// Visits every pair of `ranges` (each `[start, end)` of one space, ascending) as of one
    /// instant, however long the visit takes: a Raft snapshot of a large data set is read while
    /// writes go on. `frozen` is called once that instant is fixed, before the first visit, so a
    /// caller holding a lock to keep writers out can release it there.
    ///
    /// This default is consistent only while the caller keeps writers out: it calls `frozen`
    /// after the visit. Stores with point-in-time reads (RocksDB) override it.
    fn visit_consistent(
        &self,
        ranges: &[KvRange],
        frozen: &mut dyn FnMut(),
        visit: &mut PairVisitor<'_>,
    ) -> Result<(), StoreError> {
        for (space, start, end) in ranges {
            let mut from = start.clone();
            loop {
                let page = self.scan(*space, &from, end, VISIT_PAGE_PAIRS)?;
                for (key, value) in &page {
                    visit(*space, key, value)?;
                }
                match page.last() {
                    Some((key, _)) if page.len() == VISIT_PAGE_PAIRS => {
                        from = key_successor(key);
                    }
                    _ => break,
                }
            }
        }
        frozen();
        Ok(())
    }
}

/// What [`Kv::visit_consistent`] calls with each pair; an error stops the visit.
pub type PairVisitor<'a> = dyn FnMut(Space, &[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// One key range of one space, `[start, end)`, for [`Kv::visit_consistent`].
pub type KvRange = (Space, Vec<u8>, Vec<u8>);

/// Pairs the default [`Kv::visit_consistent`] reads per scan.
const VISIT_PAGE_PAIRS: usize = 4096;

/// In-memory [`Kv`]: one `BTreeMap` per space under a mutex. `sync` is a no-op; durability
/// across an engine "restart" comes from reopening an `Engine` over the same `Arc<MemKv>`.
#[derive(Debug, Default)]
pub struct MemKv {
    spaces: Mutex<[BTreeMap<Vec<u8>, Vec<u8>>; 4]>,
}

impl MemKv {
    /// An empty store.
    pub fn new() -> MemKv {
        MemKv::default()
    }

    /// Number of keys in `space` (for tests and diagnostics).
    pub fn len(&self, space: Space) -> usize {
        let spaces = self.spaces.lock().unwrap_or_else(PoisonError::into_inner);
        spaces[space.index()].len()
    }

    /// Whether every space is empty.
    pub fn is_empty(&self) -> bool {
        Space::ALL.iter().all(|space| self.len(*space) == 0)
    }
}

impl Kv for MemKv {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let spaces = self.spaces.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(spaces[space.index()].get(key).cloned())
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
        let spaces = self.spaces.lock().unwrap_or_else(PoisonError::into_inner);
        let range = (Bound::Included(start), Bound::Excluded(end));
        let pairs = spaces[space.index()]
            .range::<[u8], _>(range)
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
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
        let spaces = self.spaces.lock().unwrap_or_else(PoisonError::into_inner);
        let range = (Bound::Included(start), Bound::Excluded(end));
        let pairs = spaces[space.index()]
            .range::<[u8], _>(range)
            .rev()
            .take(limit)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Ok(pairs)
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<(), StoreError> {
        // One lock for the whole batch: readers see all of it or none of it.
        let mut spaces = self.spaces.lock().unwrap_or_else(PoisonError::into_inner);
        for op in batch.ops {
            match op {
                WriteOp::Put { space, key, value } => {
                    spaces[space.index()].insert(key, value);
                }
                WriteOp::Delete { space, key } => {
                    spaces[space.index()].remove(&key);
                }
                WriteOp::DeleteRange { space, start, end } => {
                    if start < end {
                        let map = &mut spaces[space.index()];
                        let mut tail = map.split_off(&start);
                        let mut kept = tail.split_off(&end);
                        map.append(&mut kept);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The smallest key strictly greater than `key` (`key` followed by a zero byte): resumes a scan
/// just after a key already seen.
pub fn key_successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// The first key after every key starting with `prefix`, or `None` when no such key exists
/// (the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_kv_scans_and_deletes_ranges() {
        let kv = MemKv::new();
        let mut batch = WriteBatch::new();
        for i in 0u8..10 {
            batch.put(Space::Docs, vec![b'd', i], vec![i]);
        }
        batch.put(Space::Catalog, b"x".to_vec(), b"y".to_vec());
        kv.write(batch, true).unwrap();
        let page = kv.scan(Space::Docs, &[b'd', 2], &[b'd', 8], 3).unwrap();
        assert_eq!(page.len(), 3);
        assert_eq!(page[0].0, vec![b'd', 2]);
        let back = kv
            .scan_reverse(Space::Docs, &[b'd', 2], &[b'd', 8], 3)
            .unwrap();
        let keys: Vec<u8> = back.iter().map(|(k, _)| k[1]).collect();
        assert_eq!(keys, vec![7, 6, 5]);
        let mut batch = WriteBatch::new();
        batch.delete_range(Space::Docs, vec![b'd', 3], vec![b'd', 7]);
        batch.delete(Space::Docs, vec![b'd', 0]);
        kv.write(batch, true).unwrap();
        let all = kv.scan(Space::Docs, b"d", b"e", 100).unwrap();
        let keys: Vec<u8> = all.iter().map(|(k, _)| k[1]).collect();
        assert_eq!(keys, vec![1, 2, 7, 8, 9]);
        assert_eq!(kv.get(Space::Catalog, b"x").unwrap(), Some(b"y".to_vec()));
        assert_eq!(kv.get(Space::Docs, b"x").unwrap(), None);
    }

    #[test]
    fn key_helpers_bound_ranges() {
        assert_eq!(key_successor(b"ab"), b"ab\0".to_vec());
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
