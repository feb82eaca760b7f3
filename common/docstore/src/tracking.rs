//! The donor side of a migration's catch-up: which documents of the migrating range changed
//! while the range was being copied.
//!
//! MongoDB's donor records the `_id`s its writes touch in the migrating range and the recipient
//! fetches their current versions (`_transferMods`). Shoal does the same one layer lower: the
//! engine's storage is wrapped in a [`TrackingKv`] that, while a migration of a collection is
//! registered, looks at every committed document write of that collection and records the `_id`
//! of each document whose shard key lies in the range (for deletes, read from the pre-image).
//! Only the donor's primary registers a tracker; writes are recorded in the same step as they
//! land in storage, under the same lock as the catch-up's drain, so a write is either in the
//! clone's scan, in the tracker, or both, never in neither. Under replication the engine's
//! writes are captured and committed later with the log entry's bookkeeping, so the tracking
//! layer sits below the capture ([`crate::Engine::with_captured_writes`]): noting a write when
//! the engine made it let a drain read the document before it existed, send it as deleted, and
//! the donor's range deletion then removed the only copy. A failover loses the tracker, and the
//! migration then aborts and starts again.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
};

use bson::{Bson, Document};
use shoal_common::chunks::ShardKeyPattern;

use crate::{
    error::StoreError,
    keys::decode_document,
    kv::{Kv, KvPair, KvRange, PairVisitor, Space, WriteBatch, WriteOp},
    sharding::KeyRange,
};

/// Changed documents one tracker holds before it gives up (the migration then aborts rather
/// than let the donor's memory grow without bound).
pub const TRACKED_IDS_MAX: usize = 1_000_000;

/// One registered migration of one collection.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// The key prefix of the collection's documents.
    prefix: Vec<u8>,
    pattern: ShardKeyPattern,
    range: KeyRange,
    /// Changed documents by storage key, with their `_id`.
    changed: BTreeMap<Vec<u8>, Bson>,
    /// Set when the tracker lost track (too many changes, or the collection was dropped).
    pub broken: Option<String>,
}

impl Tracker {
    /// A tracker of `range` in the collection whose documents start with `prefix`.
    pub fn new(prefix: Vec<u8>, pattern: ShardKeyPattern, range: KeyRange) -> Tracker {
        Tracker {
            prefix,
            pattern,
            range,
            changed: BTreeMap::new(),
            broken: None,
        }
    }

    fn note(&mut self, key: &[u8], document: &Document) {
        let Ok(shard_key) = self.pattern.extract(document) else {
            return;
        };
        if !self.range.contains(&shard_key) {
            return;
        }
        if self.changed.len() >= TRACKED_IDS_MAX {
            self.broken = Some(format!(
                "more than {TRACKED_IDS_MAX} documents changed during the migration"
            ));
            return;
        }
        let id = document.get("_id").cloned().unwrap_or(Bson::Null);
        self.changed.insert(key.to_vec(), id);
    }

    /// Puts back changes taken by [`Tracker::drain`] but not sent (a page filled up), unless
    /// a newer change of the same document was recorded meanwhile.
    pub fn restore(&mut self, unsent: Vec<(Vec<u8>, Bson)>) {
        for (key, id) in unsent {
            self.changed.entry(key).or_insert(id);
        }
    }

    /// Takes up to `count_max` changed documents (storage key, `_id`), and how many remain.
    pub fn drain(&mut self, count_max: usize) -> (Vec<(Vec<u8>, Bson)>, usize) {
        let mut taken = Vec::new();
        while taken.len() < count_max {
            let Some(entry) = self.changed.pop_first() else {
                break;
            };
            taken.push(entry);
        }
        (taken, self.changed.len())
    }
}

/// The registered trackers, by namespace.
#[derive(Default, Debug)]
pub(crate) struct Trackers {
    by_ns: Mutex<HashMap<String, Tracker>>,
}

impl Trackers {
    /// Runs `f` on the tracker table.
    pub fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Tracker>) -> R) -> R {
        let mut table = self.by_ns.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut table)
    }

    /// Notes `batch`'s changes and writes it, holding the tracker table throughout.
    ///
    /// Holding the table across the write is what makes catch-up complete: a drain
    /// ([`Tracker::drain`], then reading the current versions) can otherwise run between noting a
    /// change and writing it, read the old version (or none, sent as a delete), and the change
    /// then reaches neither the clone nor the catch-up; the donor's range deletion later removes
    /// the only copy. For the same reason a tracker's registration cannot fall between a write's
    /// check and its write, so the table is taken for every write, tracked or not.
    fn observe_and_write(
        &self,
        inner: &dyn Kv,
        batch: WriteBatch,
        sync: bool,
    ) -> Result<(), StoreError> {
        let mut table = self.by_ns.lock().unwrap_or_else(PoisonError::into_inner);
        for tracker in table.values_mut() {
            for op in &batch.ops {
                observe_op(tracker, inner, op)?;
            }
        }
        inner.write(batch, sync)
    }
}

fn observe_op(tracker: &mut Tracker, inner: &dyn Kv, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::Put { space, key, value }
            if *space == Space::Docs && key.starts_with(&tracker.prefix) =>
        {
            let document = decode_document(key, value)?;
            tracker.note(key, &document);
        }
        WriteOp::Delete { space, key }
            if *space == Space::Docs && key.starts_with(&tracker.prefix) =>
        {
            if let Some(old) = inner.get(Space::Docs, key)? {
                let document = decode_document(key, &old)?;
                tracker.note(key, &document);
            }
        }
        WriteOp::DeleteRange { space, start, .. }
            if *space == Space::Docs && start.starts_with(&tracker.prefix) =>
        {
            tracker.broken = Some("the collection was dropped during the migration".into());
        }
        _ => {}
    }
    Ok(())
}

/// The engine's storage with migration tracking in front of every write.
pub(crate) struct TrackingKv {
    inner: Arc<dyn Kv>,
    trackers: Arc<Trackers>,
}

impl TrackingKv {
    /// Wraps `inner`; `trackers` is shared with the engine.
    pub fn new(inner: Arc<dyn Kv>, trackers: Arc<Trackers>) -> TrackingKv {
        TrackingKv { inner, trackers }
    }
}

impl Kv for TrackingKv {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KvPair>, StoreError> {
        self.inner.scan(space, start, end, limit)
    }

    fn scan_reverse(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KvPair>, StoreError> {
        self.inner.scan_reverse(space, start, end, limit)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        // Observed before it is written, so deletes still find their pre-images.
        self.trackers
            .observe_and_write(self.inner.as_ref(), batch, sync)
    }

    fn visit_consistent(
        &self,
        ranges: &[KvRange],
        frozen: &mut dyn FnMut(),
        visit: &mut PairVisitor<'_>,
    ) -> Result<(), StoreError> {
        self.inner.visit_consistent(ranges, frozen, visit)
    }
}
