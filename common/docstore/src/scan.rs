//! Executing an access path: a list of key ranges over the documents themselves (a collection
//! scan or `_id` ranges) or over an index's entries (each entry then fetches its document).
//!
//! A [`RangeScan`] is plain data and resumable, so a cursor keeps one between `getMore`s and
//! costs a few hundred bytes however large the range. It counts what it examined for
//! `explain`. Filters are the caller's business: the scan yields every document its ranges
//! reach, at most once.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use bson::Document;
use shoal_common::CommandError;

use crate::{
    error::StoreError,
    keys::{CollectionId, collection_prefix, decode_document},
    kv::{Space, key_successor},
    matching::{MATERIALIZE_BYTES_MAX, memory_limit_error},
    sharding::ShardingState,
    txn::{Reader, Step},
};

/// What `explain` reports as examined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExecStats {
    /// Index entries read (documents read, for `_id` ranges).
    pub keys_examined: u64,
    /// Documents read.
    pub docs_examined: u64,
}

/// What the ranges are ranges of.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// Document keys; `counts_keys` when the ranges come from the `_id` index rather than a
    /// collection scan.
    Docs { counts_keys: bool },
    /// Entries of a secondary index of collection `coll`; a multikey index may hold several
    /// entries per document, so those are deduplicated by `_id`.
    Index { coll: CollectionId, multikey: bool },
}

/// A resumable scan over key ranges.
#[derive(Debug)]
pub(crate) struct RangeScan {
    /// Ranges still to scan, in scan order; the first may be partly consumed.
    ranges: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Whether each range is read from its end down.
    reverse: bool,
    target: Target,
    /// `_id`s already returned by a multikey scan.
    seen: HashSet<Vec<u8>>,
    seen_bytes: usize,
    /// When set, documents this shard does not own are skipped (orphans).
    owner: Option<Arc<ShardingState>>,
    /// Counters since the scan started.
    pub stats: ExecStats,
}

impl RangeScan {
    /// A scan of `ranges` (ascending, disjoint), read backwards when `reverse`.
    pub fn new(ranges: Vec<(Vec<u8>, Vec<u8>)>, reverse: bool, target: Target) -> RangeScan {
        let mut ranges: VecDeque<_> = ranges.into();
        if reverse {
            ranges = ranges.into_iter().rev().collect();
        }
        RangeScan {
            ranges,
            reverse,
            target,
            seen: HashSet::new(),
            seen_bytes: 0,
            owner: None,
            stats: ExecStats::default(),
        }
    }

    /// The same scan, skipping documents `owner` says this shard does not own.
    pub fn owned_by(mut self, owner: Option<Arc<ShardingState>>) -> RangeScan {
        self.owner = owner;
        self
    }

    fn skips(&self, document: &Document) -> bool {
        self.owner
            .as_ref()
            .is_some_and(|owner| !owner.owns(document))
    }

    /// Calls `visit` with each document (its key, the document, its stored size) until it asks
    /// to stop or the ranges are exhausted. Returns whether they are.
    pub fn run<E: From<StoreError> + From<CommandError>>(
        &mut self,
        reader: &dyn Reader,
        mut visit: impl FnMut(&[u8], Document, usize) -> Result<Step, E>,
    ) -> Result<bool, E> {
        while let Some((start, end)) = self.ranges.front().cloned() {
            let page = if self.reverse {
                reader.scan_page_rev(Space::Docs, &start, &end)?
            } else {
                reader.scan_page(Space::Docs, &start, &end)?
            };
            for (key, value) in page.pairs {
                let step = match self.target.clone() {
                    Target::Docs { counts_keys } => {
                        self.stats.docs_examined += 1;
                        if counts_keys {
                            self.stats.keys_examined += 1;
                        }
                        let document = decode_document(&key, &value)?;
                        if self.skips(&document) {
                            continue;
                        }
                        visit(&key, document, value.len())?
                    }
                    Target::Index { coll, multikey } => {
                        self.stats.keys_examined += 1;
                        match self.fetch(reader, coll, multikey, &value, &mut visit)? {
                            Some(step) => step,
                            None => continue,
                        }
                    }
                };
                match step {
                    Step::Next => {}
                    Step::StopAfter => {
                        self.resume(&key, true);
                        return Ok(false);
                    }
                    Step::StopBefore => {
                        self.resume(&key, false);
                        return Ok(false);
                    }
                }
            }
            match page.next {
                Some(next) => {
                    if let Some(front) = self.ranges.front_mut() {
                        if self.reverse {
                            front.1 = next;
                        } else {
                            front.0 = next;
                        }
                    }
                }
                None => {
                    self.ranges.pop_front();
                }
            }
        }
        Ok(true)
    }

    /// Fetches the document of an index entry and visits it; `None` when it was skipped (seen
    /// before, or deleted since the entry was read).
    fn fetch<E: From<StoreError> + From<CommandError>>(
        &mut self,
        reader: &dyn Reader,
        coll: CollectionId,
        multikey: bool,
        id_code: &[u8],
        visit: &mut impl FnMut(&[u8], Document, usize) -> Result<Step, E>,
    ) -> Result<Option<Step>, E> {
        if multikey && self.seen.contains(id_code) {
            return Ok(None);
        }
        let mut doc_key = collection_prefix(coll);
        doc_key.extend_from_slice(id_code);
        let Some(bytes) = reader.get(Space::Docs, &doc_key)? else {
            return Ok(None);
        };
        self.stats.docs_examined += 1;
        let document = decode_document(&doc_key, &bytes)?;
        if self.skips(&document) {
            return Ok(None);
        }
        let step = visit(&doc_key, document, bytes.len())?;
        if multikey && !matches!(step, Step::StopBefore) {
            self.seen_bytes += id_code.len();
            if self.seen_bytes > MATERIALIZE_BYTES_MAX {
                return Err(memory_limit_error().into());
            }
            self.seen.insert(id_code.to_vec());
        }
        Ok(Some(step))
    }

    /// Moves the current range past `key` (`consumed`) or to it.
    fn resume(&mut self, key: &[u8], consumed: bool) {
        let Some(front) = self.ranges.front_mut() else {
            return;
        };
        match (self.reverse, consumed) {
            (false, true) => front.0 = key_successor(key),
            (false, false) => front.0 = key.to_vec(),
            (true, true) => front.1 = key.to_vec(),
            (true, false) => front.1 = key_successor(key),
        }
    }
}
