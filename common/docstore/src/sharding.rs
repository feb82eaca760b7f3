//! What a shard knows about one of its sharded collections: the shard-key ranges it owns, the
//! shard version it holds, and the range under a migration's critical section.
//!
//! The config server pushes this state with `_shoalSetFiltering`, a replicated write, whenever
//! ownership changes (shardCollection, a migration's critical section and commit). Because it
//! lives in the collection's catalog entry and changes only through the log, every member applies
//! each write against the same ownership, so the checks below are deterministic:
//! - a command carrying `shardVersion` (every router request for a sharded collection) whose
//!   epoch or major version differs from the shard's fails whole with StaleConfig before doing
//!   anything; the router refreshes its chunk map and retries;
//! - a document write outside the owned ranges, or inside the critical section, fails that
//!   statement with StaleConfig (the router re-targets it);
//! - reads and multi-document writes skip documents the shard does not own (orphans: a
//!   migration's copy not yet committed, or a donor's copy not yet deleted).
//!
//! Only `epoch` and `major` make the version: splits and merges bump minor versions and never
//! change which ranges a shard owns, while every migration bumps the major version of both the
//! donor and the recipient.

use std::cmp::Ordering;

use bson::{Bson, Document, doc, oid::ObjectId};
use shoal_common::{
    CommandError, ErrorCode, bsonorder::compare_key_values, chunks::ShardKeyPattern,
};

/// A shard-key range `[min, max)`, bounds in the shard key's extracted form.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRange {
    /// Inclusive lower bound.
    pub min: Document,
    /// Exclusive upper bound.
    pub max: Document,
}

impl KeyRange {
    /// Whether `key` lies in `[min, max)`.
    pub fn contains(&self, key: &Document) -> bool {
        compare_key_values(&self.min, key) != Ordering::Greater
            && compare_key_values(key, &self.max) == Ordering::Less
    }

    fn to_document(&self) -> Document {
        doc! {"min": self.min.clone(), "max": self.max.clone()}
    }

    /// Parses `{min, max}`, checking `min < max`.
    pub fn from_document(range: &Document) -> Result<KeyRange, CommandError> {
        let min = range
            .get_document("min")
            .map_err(|_| CommandError::bad_value("a key range needs a 'min' document"))?;
        let max = range
            .get_document("max")
            .map_err(|_| CommandError::bad_value("a key range needs a 'max' document"))?;
        if compare_key_values(min, max) != Ordering::Less {
            return Err(CommandError::bad_value(format!(
                "key range min {min} is not below max {max}"
            )));
        }
        Ok(KeyRange {
            min: min.clone(),
            max: max.clone(),
        })
    }
}

/// One shard's sharding state of one collection.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardingState {
    /// The collection incarnation (changes when it is dropped and sharded again).
    pub epoch: ObjectId,
    /// The highest major chunk version among the chunks this shard owns (0: owns none).
    pub major: u32,
    /// The highest major chunk version of the whole collection when this state was computed:
    /// it only grows within an epoch, so it orders pushes (a shard losing its last chunk goes
    /// to `major` 0, but never to a lower `collection_major`).
    pub collection_major: u32,
    /// The shard key.
    pub pattern: ShardKeyPattern,
    /// Owned ranges, sorted, disjoint.
    pub ranges: Vec<KeyRange>,
    /// A range whose writes are held while a migration commits.
    pub critical: Option<KeyRange>,
}

fn bad(what: &str) -> CommandError {
    CommandError::bad_value(format!("sharding state: {what}"))
}

impl ShardingState {
    /// The stored (and `_shoalSetFiltering`) form.
    pub fn to_document(&self) -> Document {
        let mut state = doc! {
            "epoch": self.epoch,
            "major": i64::from(self.major),
            "collectionMajor": i64::from(self.collection_major),
            "key": self.pattern.to_document(),
            "ranges": self.ranges.iter().map(KeyRange::to_document).collect::<Vec<_>>(),
        };
        if let Some(critical) = &self.critical {
            state.insert("critical", critical.to_document());
        }
        state
    }

    /// Parses and validates the stored form: ranges sorted and disjoint.
    pub fn from_document(state: &Document) -> Result<ShardingState, CommandError> {
        let epoch = state.get_object_id("epoch").map_err(|_| bad("epoch"))?;
        let major = state.get_i64("major").map_err(|_| bad("major"))?;
        let major = u32::try_from(major).map_err(|_| bad("major out of range"))?;
        let collection_major = match state.get_i64("collectionMajor") {
            Ok(value) => u32::try_from(value).map_err(|_| bad("collectionMajor out of range"))?,
            Err(_) => major,
        };
        let pattern = ShardKeyPattern::parse(state.get_document("key").map_err(|_| bad("key"))?)?;
        let mut ranges = Vec::new();
        for range in state.get_array("ranges").map_err(|_| bad("ranges"))? {
            let range = range.as_document().ok_or_else(|| bad("range"))?;
            ranges.push(KeyRange::from_document(range)?);
        }
        for pair in ranges.windows(2) {
            if compare_key_values(&pair[0].max, &pair[1].min) == Ordering::Greater {
                return Err(bad("ranges overlap or are unsorted"));
            }
        }
        let critical = match state.get("critical") {
            None | Some(Bson::Null) => None,
            Some(Bson::Document(range)) => Some(KeyRange::from_document(range)?),
            Some(_) => return Err(bad("critical")),
        };
        Ok(ShardingState {
            epoch,
            major,
            collection_major,
            pattern,
            ranges,
            critical,
        })
    }

    /// The extracted shard key of `document`; `None` when it cannot be extracted (a document
    /// stored before the collection was sharded may lack a valid key), which counts as owned
    /// so that no data is ever hidden by a malformed key.
    fn key_of(&self, document: &Document) -> Option<Document> {
        self.pattern.extract(document).ok()
    }

    /// Whether the shard-key value `key` lies in an owned range.
    pub fn owns_key(&self, key: &Document) -> bool {
        let after = self
            .ranges
            .partition_point(|range| compare_key_values(&range.min, key) != Ordering::Greater);
        after > 0 && self.ranges[after - 1].contains(key)
    }

    /// Whether this shard owns `document`.
    pub fn owns(&self, document: &Document) -> bool {
        self.key_of(document).is_none_or(|key| self.owns_key(&key))
    }

    /// Fails with StaleConfig when this shard may not write `document` now: it is not owned,
    /// or its range is in a migration's critical section.
    pub fn check_write(&self, ns: &str, document: &Document) -> Result<(), CommandError> {
        let Some(key) = self.key_of(document) else {
            return Ok(());
        };
        if !self.owns_key(&key) {
            return Err(stale(
                ns,
                format!("this shard does not own shard key {key} of {ns}"),
            ));
        }
        if self
            .critical
            .as_ref()
            .is_some_and(|range| range.contains(&key))
        {
            return Err(stale(
                ns,
                format!("shard key {key} of {ns} is in a migration's critical section"),
            ));
        }
        Ok(())
    }

    /// Checks the version a router routed with (`shardVersion: {e, v}`) against this state.
    pub fn check_version(&self, ns: &str, received: &ReceivedVersion) -> Result<(), CommandError> {
        if received.epoch == self.epoch && received.major == self.major {
            return Ok(());
        }
        let mut error = stale(
            ns,
            format!(
                "version mismatch for {ns}: router sent {}|{}, shard has {}|{}",
                received.major, received.epoch, self.major, self.epoch
            ),
        );
        error.extra.insert("vReceived", received.to_document());
        error.extra.insert(
            "vWanted",
            ReceivedVersion {
                epoch: self.epoch,
                major: self.major,
            }
            .to_document(),
        );
        Err(error)
    }
}

/// The `shardVersion` a router sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedVersion {
    /// The collection epoch the router knows.
    pub epoch: ObjectId,
    /// The major version of this shard in the router's chunk map.
    pub major: u32,
}

impl ReceivedVersion {
    /// Parses `{e: ObjectId, v: Timestamp(major, minor)}`.
    pub fn parse(value: &Bson) -> Result<ReceivedVersion, CommandError> {
        let shape = || CommandError::bad_value("shardVersion must be {e: ObjectId, v: Timestamp}");
        let version = value.as_document().ok_or_else(shape)?;
        let epoch = version.get_object_id("e").map_err(|_| shape())?;
        let major = version.get_timestamp("v").map_err(|_| shape())?.time;
        Ok(ReceivedVersion { epoch, major })
    }

    /// The wire form.
    pub fn to_document(self) -> Document {
        doc! {"e": self.epoch, "v": bson::Timestamp { time: self.major, increment: 0 }}
    }
}

/// StaleConfig for `ns`.
pub fn stale(ns: &str, errmsg: String) -> CommandError {
    let mut error = CommandError::new(ErrorCode::STALE_CONFIG, errmsg);
    error.extra.insert("ns", ns);
    error
}

/// The StaleConfig of a router that sent a version for a collection this shard holds no
/// sharding state for (never told, or dropped since).
pub fn stale_unknown(ns: &str, received: &ReceivedVersion) -> CommandError {
    let mut error = stale(ns, format!("this shard has no sharding state for {ns} yet"));
    error.extra.insert("vReceived", received.to_document());
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ranges: &[(i32, i32)], critical: Option<(i32, i32)>) -> ShardingState {
        let range = |(min, max): (i32, i32)| KeyRange {
            min: doc! {"k": min},
            max: doc! {"k": max},
        };
        ShardingState {
            epoch: ObjectId::from_bytes([1; 12]),
            major: 3,
            collection_major: 3,
            pattern: ShardKeyPattern::parse(&doc! {"k": 1}).unwrap(),
            ranges: ranges.iter().copied().map(range).collect(),
            critical: critical.map(range),
        }
    }

    #[test]
    fn ownership_follows_the_ranges() {
        let state = state(&[(0, 10), (20, 30)], None);
        assert!(state.owns(&doc! {"k": 0}));
        assert!(state.owns(&doc! {"k": 9}));
        assert!(!state.owns(&doc! {"k": 10}));
        assert!(!state.owns(&doc! {"k": -1}));
        assert!(state.owns(&doc! {"k": 25}));
        assert!(!state.owns(&doc! {"k": 30}));
    }

    #[test]
    fn writes_outside_or_in_the_critical_section_are_stale() {
        let state = state(&[(0, 10)], Some((5, 10)));
        assert!(state.check_write("db.c", &doc! {"k": 1}).is_ok());
        let error = state.check_write("db.c", &doc! {"k": 6}).unwrap_err();
        assert_eq!(error.code, ErrorCode::STALE_CONFIG);
        assert!(state.check_write("db.c", &doc! {"k": 11}).is_err());
    }

    #[test]
    fn versions_compare_epoch_and_major() {
        let state = state(&[(0, 10)], None);
        let mut received = ReceivedVersion {
            epoch: state.epoch,
            major: 3,
        };
        assert!(state.check_version("db.c", &received).is_ok());
        received.major = 2;
        let error = state.check_version("db.c", &received).unwrap_err();
        assert_eq!(
            error
                .extra
                .get_document("vWanted")
                .unwrap()
                .get_timestamp("v")
                .unwrap()
                .time,
            3
        );
        received.major = 3;
        received.epoch = ObjectId::from_bytes([2; 12]);
        assert!(state.check_version("db.c", &received).is_err());
        let parsed = ReceivedVersion::parse(&Bson::Document(received.to_document())).unwrap();
        assert_eq!(parsed, received);
    }

    #[test]
    fn the_stored_form_round_trips_and_is_validated() {
        let state = state(&[(0, 10), (20, 30)], Some((20, 25)));
        let back = ShardingState::from_document(&state.to_document()).unwrap();
        assert_eq!(back.ranges, state.ranges);
        assert_eq!(back.critical, state.critical);
        let mut broken = state.to_document();
        broken.insert("ranges", vec![doc! {"min": {"k": 5}, "max": {"k": 1}}]);
        assert!(ShardingState::from_document(&broken).is_err());
    }
}
