//! Read paths shared by plain reads and by write commands, and the write overlay that makes one
//! command's writes a single atomic batch.
//!
//! A write command stages its puts and deletes in a [`Txn`]; later statements of the same
//! command read through it (an insert sees the duplicate it staged a moment ago, an update sees
//! the document an earlier statement changed). `commit` turns the overlay into one
//! [`WriteBatch`] (documents, catalog entries and statistics together) written with sync. Only
//! the engine's writer mutex holder builds a `Txn`, so check-then-write is race free.

use std::collections::{BTreeMap, HashMap};

use bson::Document;

use crate::{
    error::StoreError,
    keys::{CollStats, CollectionId, decode_document, stats_key},
    kv::{Kv, KvPair, Space, WriteBatch, key_successor},
};

/// How many pairs one storage scan call fetches: large enough to amortize the call, small
/// enough that a cursor never holds much more than a batch in memory.
pub(crate) const SCAN_PAGE_PAIRS: usize = 256;

/// One page of a scan: the pairs, and where to resume (`None` once the range is exhausted).
/// A reverse page holds its pairs in descending order and resumes with `next` as the new
/// (exclusive) end of the range.
pub(crate) struct ScanPage {
    pub pairs: Vec<KvPair>,
    pub next: Option<Vec<u8>>,
}

/// Point reads and paged scans, either straight from storage or through a write overlay.
pub(crate) trait Reader {
    /// The value of `key`.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// One page of `[start, end)`.
    fn scan_page(&self, space: Space, start: &[u8], end: &[u8]) -> Result<ScanPage, StoreError>;
    /// One page of `[start, end)`, from the end downwards.
    fn scan_page_rev(&self, space: Space, start: &[u8], end: &[u8])
    -> Result<ScanPage, StoreError>;
}

/// Reads straight from storage.
pub(crate) struct Direct<'a>(pub &'a dyn Kv);

fn page_from_storage(
    kv: &dyn Kv,
    space: Space,
    start: &[u8],
    end: &[u8],
) -> Result<ScanPage, StoreError> {
    let pairs = kv.scan(space, start, end, SCAN_PAGE_PAIRS)?;
    let next = if pairs.len() < SCAN_PAGE_PAIRS {
        None
    } else {
        pairs.last().map(|(key, _)| key_successor(key))
    };
    Ok(ScanPage { pairs, next })
}

fn page_from_storage_rev(
    kv: &dyn Kv,
    space: Space,
    start: &[u8],
    end: &[u8],
) -> Result<ScanPage, StoreError> {
    let pairs = kv.scan_reverse(space, start, end, SCAN_PAGE_PAIRS)?;
    let next = if pairs.len() < SCAN_PAGE_PAIRS {
        None
    } else {
        pairs.last().map(|(key, _)| key.clone())
    };
    Ok(ScanPage { pairs, next })
}

impl Reader for Direct<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(space, key)
    }

    fn scan_page(&self, space: Space, start: &[u8], end: &[u8]) -> Result<ScanPage, StoreError> {
        page_from_storage(self.0, space, start, end)
    }

    fn scan_page_rev(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
    ) -> Result<ScanPage, StoreError> {
        page_from_storage_rev(self.0, space, start, end)
    }
}

/// What a scan callback wants next.
pub(crate) enum Step {
    /// Keep going.
    Next,
    /// Stop; this document was consumed, resume after it.
    StopAfter,
    /// Stop; this document was not consumed, resume at it.
    StopBefore,
}

/// Calls `visit` on every document with a key in `[start, end)`, in key order, until it asks to
/// stop. Returns where to resume, or `None` when the range was exhausted.
/// `visit` gets the key, the document and its stored size in bytes.
pub(crate) fn scan_documents<E: From<StoreError>>(
    reader: &dyn Reader,
    start: &[u8],
    end: &[u8],
    mut visit: impl FnMut(&[u8], Document, usize) -> Result<Step, E>,
) -> Result<Option<Vec<u8>>, E> {
    let mut cursor = start.to_vec();
    loop {
        let page = reader.scan_page(Space::Docs, &cursor, end)?;
        for (key, value) in page.pairs {
            let document = decode_document(&key, &value)?;
            match visit(&key, document, value.len())? {
                Step::Next => {}
                Step::StopAfter => return Ok(Some(key_successor(&key))),
                Step::StopBefore => return Ok(Some(key)),
            }
        }
        match page.next {
            Some(next) => cursor = next,
            None => return Ok(None),
        }
    }
}

/// How to take back one staged change when a statement fails half-way.
enum Undo {
    /// Restore the staged state of a key (`None`: the key was not staged).
    Pending {
        slot: usize,
        key: Vec<u8>,
        previous: Option<Option<Vec<u8>>>,
    },
    /// Subtract a statistics delta again.
    Stats {
        coll: CollectionId,
        delta: CollStats,
    },
}

/// A write overlay over storage; see the module doc.
///
/// Statements: between [`Txn::begin_statement`] and [`Txn::rollback_statement`] every change is
/// also logged so that a statement failing after it staged part of its writes (a multi-update
/// whose third document violates a unique index) leaves no trace, while earlier statements of
/// the same command stay staged.
pub(crate) struct Txn<'a> {
    kv: &'a dyn Kv,
    pending: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; 4],
    stats: HashMap<CollectionId, CollStats>,
    order: Vec<CollectionId>,
    undo: Option<Vec<Undo>>,
    /// Whether document writes are checked against the shard's ownership (off only for a
    /// migration's own copies and deletions of ranges the shard does not own).
    pub ownership_checks: bool,
}

fn slot(space: Space) -> usize {
    match space {
        Space::Catalog => 0,
        Space::Docs => 1,
        Space::RaftLog => 2,
        Space::RaftMeta => 3,
    }
}

impl<'a> Txn<'a> {
    /// An empty overlay.
    pub fn new(kv: &'a dyn Kv) -> Txn<'a> {
        Txn {
            kv,
            pending: Default::default(),
            stats: HashMap::new(),
            order: Vec::new(),
            undo: None,
            ownership_checks: true,
        }
    }

    /// Starts logging changes so that [`Txn::rollback_statement`] can take them back.
    pub fn begin_statement(&mut self) {
        self.undo = Some(Vec::new());
    }

    /// Takes back every change since [`Txn::begin_statement`] and stops logging.
    pub fn rollback_statement(&mut self) {
        let Some(log) = self.undo.take() else {
            return;
        };
        for entry in log.into_iter().rev() {
            match entry {
                Undo::Pending {
                    slot,
                    key,
                    previous,
                } => match previous {
                    Some(previous) => {
                        self.pending[slot].insert(key, previous);
                    }
                    None => {
                        self.pending[slot].remove(&key);
                    }
                },
                Undo::Stats { coll, delta } => {
                    if let Some(stats) = self.stats.get_mut(&coll) {
                        stats.count -= delta.count;
                        stats.bytes -= delta.bytes;
                    }
                }
            }
        }
    }

    /// Stages `value` (or a delete, for `None`) at `key` in slot `slot`, logging the change.
    fn stage(&mut self, slot: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        if let Some(log) = &mut self.undo {
            let previous = self.pending[slot].get(&key).cloned();
            log.push(Undo::Pending {
                slot,
                key: key.clone(),
                previous,
            });
        }
        self.pending[slot].insert(key, value);
    }

    /// Stages `key = value` in `space`.
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.stage(slot(space), key, Some(value));
    }

    /// Stages the removal of `key` from `space` (no statistics: not for documents).
    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.stage(slot(space), key, None);
    }

    /// Stages a document write, keeping the collection's statistics in step.
    pub fn put_doc(
        &mut self,
        coll: CollectionId,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        let old = self.get(Space::Docs, &key)?;
        let delta = match &old {
            Some(old) => CollStats {
                count: 0,
                bytes: len_i64(value.len()) - len_i64(old.len()),
            },
            None => CollStats {
                count: 1,
                bytes: len_i64(value.len()),
            },
        };
        self.add_stats(coll, delta);
        self.stage(slot(Space::Docs), key, Some(value));
        Ok(())
    }

    /// Stages a document delete; a missing document is a no-op.
    pub fn delete_doc(&mut self, coll: CollectionId, key: Vec<u8>) -> Result<(), StoreError> {
        if let Some(old) = self.get(Space::Docs, &key)? {
            self.add_stats(
                coll,
                CollStats {
                    count: -1,
                    bytes: -len_i64(old.len()),
                },
            );
            self.stage(slot(Space::Docs), key, None);
        }
        Ok(())
    }

    fn add_stats(&mut self, coll: CollectionId, delta: CollStats) {
        let entry = self.stats.entry(coll).or_insert_with(|| {
            self.order.push(coll);
            CollStats::default()
        });
        entry.count += delta.count;
        entry.bytes += delta.bytes;
        if let Some(log) = &mut self.undo {
            log.push(Undo::Stats { coll, delta });
        }
    }

    /// What is staged at `key` (`Some(None)`: a staged delete), without reading storage.
    pub fn staged(&self, space: Space, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.pending[slot(space)].get(key)
    }

    /// Whether nothing was staged.
    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(BTreeMap::is_empty)
    }

    /// Writes everything staged as one synced batch.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for space in Space::ALL {
            // Moved, not copied: an index build stages one entry per document.
            for (key, value) in std::mem::take(&mut self.pending[slot(space)]) {
                match value {
                    Some(value) => batch.put(space, key, value),
                    None => batch.delete(space, key),
                }
            }
        }
        for coll in &self.order {
            let Some(delta) = self.stats.get(coll) else {
                continue;
            };
            if *delta == CollStats::default() {
                continue;
            }
            let key = stats_key(*coll);
            let mut stats = match self.kv.get(Space::Catalog, &key)? {
                Some(bytes) => CollStats::decode(&key, &bytes)?,
                None => CollStats::default(),
            };
            stats.count += delta.count;
            stats.bytes += delta.bytes;
            batch.put(Space::Catalog, key, stats.encode());
        }
        self.kv.write(batch, true)
    }
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

impl Reader for Txn<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.pending[slot(space)].get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.kv.get(space, key),
        }
    }

    fn scan_page(&self, space: Space, start: &[u8], end: &[u8]) -> Result<ScanPage, StoreError> {
        let base = page_from_storage(self.kv, space, start, end)?;
        // Staged keys are merged only up to where the storage page stopped, so the merged page
        // is exact for [start, covered) and the caller resumes at `covered`.
        let covered = base.next.clone().unwrap_or_else(|| end.to_vec());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base.pairs.into_iter().collect();
        let staged = &self.pending[slot(space)];
        for (key, value) in staged.range::<[u8], _>((
            std::ops::Bound::Included(start),
            std::ops::Bound::Excluded(covered.as_slice()),
        )) {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(ScanPage {
            pairs: merged.into_iter().collect(),
            next: base.next,
        })
    }

    fn scan_page_rev(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
    ) -> Result<ScanPage, StoreError> {
        let base = page_from_storage_rev(self.kv, space, start, end)?;
        // The storage page covers [covered, end): merge staged keys only there.
        let covered = base.next.clone().unwrap_or_else(|| start.to_vec());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base.pairs.into_iter().collect();
        let staged = &self.pending[slot(space)];
        for (key, value) in staged.range::<[u8], _>((
            std::ops::Bound::Included(covered.as_slice()),
            std::ops::Bound::Excluded(end),
        )) {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(ScanPage {
            pairs: merged.into_iter().rev().collect(),
            next: base.next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemKv;

    #[test]
    fn overlay_merges_staged_writes_into_scans() {
        let kv = MemKv::new();
        let mut batch = WriteBatch::new();
        for i in 0..600u16 {
            batch.put(Space::Docs, i.to_be_bytes().to_vec(), vec![1]);
        }
        kv.write(batch, true).unwrap();
        let mut txn = Txn::new(&kv);
        txn.pending[1].insert(5u16.to_be_bytes().to_vec(), None);
        txn.pending[1].insert(700u16.to_be_bytes().to_vec(), Some(vec![2]));
        txn.pending[1].insert(300u16.to_be_bytes().to_vec(), Some(vec![3]));
        let mut seen = Vec::new();
        let mut cursor = vec![0u8];
        loop {
            let page = txn.scan_page(Space::Docs, &cursor, &[0xff, 0xff]).unwrap();
            seen.extend(page.pairs);
            match page.next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert_eq!(seen.len(), 600);
        assert!(!seen.iter().any(|(k, _)| k == &5u16.to_be_bytes().to_vec()));
        assert!(
            seen.iter()
                .any(|(k, v)| k == &300u16.to_be_bytes().to_vec() && v == &vec![3])
        );
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(
            txn.get(Space::Docs, &700u16.to_be_bytes()).unwrap(),
            Some(vec![2])
        );
        let mut back = Vec::new();
        let mut end = vec![0xff, 0xff];
        loop {
            let page = txn.scan_page_rev(Space::Docs, &[0u8], &end).unwrap();
            back.extend(page.pairs);
            match page.next {
                Some(next) => end = next,
                None => break,
            }
        }
        back.reverse();
        assert_eq!(back, seen);
    }

    #[test]
    fn a_rolled_back_statement_leaves_earlier_ones_staged() {
        let kv = MemKv::new();
        let mut txn = Txn::new(&kv);
        let coll = CollectionId(1);
        txn.put_doc(coll, b"a".to_vec(), vec![1]).unwrap();
        txn.begin_statement();
        txn.put_doc(coll, b"a".to_vec(), vec![1, 2]).unwrap();
        txn.put_doc(coll, b"b".to_vec(), vec![3]).unwrap();
        txn.delete(Space::Catalog, b"k".to_vec());
        txn.rollback_statement();
        assert_eq!(txn.get(Space::Docs, b"a").unwrap(), Some(vec![1]));
        assert_eq!(txn.get(Space::Docs, b"b").unwrap(), None);
        assert!(txn.staged(Space::Catalog, b"k").is_none());
        txn.commit().unwrap();
        let stats = crate::catalog::stats(&Direct(&kv), coll).unwrap();
        assert_eq!(stats, CollStats { count: 1, bytes: 1 });
    }
}
