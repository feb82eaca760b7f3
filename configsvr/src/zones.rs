//! Zones (MongoDB's zone sharding): named groups of shards, and shard-key ranges pinned to a
//! zone so that the balancer keeps their chunks on the zone's shards.
//!
//! - `addShardToZone: shard, zone` adds `zone` to the shard's `config.shards.tags` (a zone
//!   exists while at least one shard carries it; adding twice is a no-op).
//! - `removeShardFromZone: shard, zone` removes it, refused with `ZoneStillInUse` when the
//!   shard is the last one of a zone that still has ranges in `config.tags` (the ranges would
//!   point at no shard).
//! - `updateZoneKeyRange: ns, min, max, zone` adds `{_id, ns, min, max, tag}` to `config.tags`;
//!   `zone: null` removes the range with exactly these bounds (no error when there is none).
//!   The collection must be sharded; bounds may be a prefix of the shard key and are extended
//!   with `MinKey`, as MongoDB does; a hashed field's bound is the hash (`NumberLong`), `MinKey`
//!   or `MaxKey`. Ranges of one namespace never overlap (`RangeOverlapConflict`; the same range
//!   with the same zone again is a no-op) and the zone must exist on some shard
//!   (`ZoneNotFound`).
//!
//! The checks are pure functions over the documents read from `config.*`, so they are tested
//! without a server; the commands read, decide and commit under the metadata lock like every
//! other metadata change.

use std::{cmp::Ordering, sync::Arc};

use bson::{Bson, Document, doc, oid::ObjectId};
use shoal_common::{
    CommandError, ErrorCode, Namespace, ShardId,
    chunks::{KeyKind, ShardKeyPattern, compare_bounds},
};
use shoal_docstore::AtomicOp;
use shoal_member::MemberCore;

use crate::{
    catalog::coll,
    server::{ConfigServer, put, string_field},
    store,
};

/// The longest zone name accepted (MongoDB has no documented limit; this keeps `config.shards`
/// documents small).
const ZONE_NAME_BYTES_MAX: usize = 256;
/// The most zones one shard may carry.
const SHARD_ZONES_MAX: usize = 1_000;

/// One zone range of `config.tags`, bounds already extended to the whole shard key.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneRange {
    /// Inclusive lower bound. Invariant: `min < max` in shard-key order.
    pub min: Document,
    /// Exclusive upper bound.
    pub max: Document,
    /// The zone name (`tag`).
    pub zone: String,
}

impl ZoneRange {
    /// Reads a `config.tags` document.
    pub fn from_document(tag: &Document) -> Result<ZoneRange, CommandError> {
        let broken = || CommandError::internal(format!("malformed config.tags document {tag}"));
        Ok(ZoneRange {
            min: tag.get_document("min").map_err(|_| broken())?.clone(),
            max: tag.get_document("max").map_err(|_| broken())?.clone(),
            zone: tag.get_str("tag").map_err(|_| broken())?.to_owned(),
        })
    }

    /// Whether the two ranges share at least one key (`[a, b)` and `[c, d)` overlap when
    /// `a < d` and `c < b`).
    pub fn overlaps(&self, other: &ZoneRange) -> bool {
        compare_bounds(&self.min, &other.max) == Ordering::Less
            && compare_bounds(&other.min, &self.max) == Ordering::Less
    }

    /// Whether both have exactly these bounds (zone aside).
    pub fn same_bounds(&self, other: &ZoneRange) -> bool {
        compare_bounds(&self.min, &other.min) == Ordering::Equal
            && compare_bounds(&self.max, &other.max) == Ordering::Equal
    }
}

/// Checks a zone name: a non-empty string of bounded length.
pub fn validate_zone_name(zone: &str) -> Result<(), CommandError> {
    if zone.is_empty() {
        return Err(CommandError::bad_value("zone name must not be empty"));
    }
    if zone.len() > ZONE_NAME_BYTES_MAX {
        return Err(CommandError::bad_value(format!(
            "zone name is longer than {ZONE_NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// Extends a range bound given for a prefix of the shard key to the whole key with `MinKey`,
/// as MongoDB's `extendRangeBound` does, and checks each value: no arrays, and a hashed
/// field's value must be a `NumberLong` hash, `MinKey` or `MaxKey`.
pub fn full_bound(
    key: &ShardKeyPattern,
    bound: &Document,
    which: &str,
) -> Result<Document, CommandError> {
    let not_prefix = || {
        CommandError::new(
            ErrorCode::SHARD_KEY_NOT_FOUND,
            format!(
                "{which}: {bound} is not a prefix of the shard key {}",
                key.to_document()
            ),
        )
    };
    if bound.is_empty() || bound.len() > key.fields.len() {
        return Err(not_prefix());
    }
    let mut full = Document::new();
    for (index, (name, kind)) in key.fields.iter().enumerate() {
        let value = match bound.iter().nth(index) {
            Some((given_name, value)) if given_name == name => value.clone(),
            Some(_) => return Err(not_prefix()),
            None => Bson::MinKey,
        };
        check_bound_value(name, *kind, &value, which)?;
        full.insert(name.clone(), value);
    }
    Ok(full)
}

fn check_bound_value(
    name: &str,
    kind: KeyKind,
    value: &Bson,
    which: &str,
) -> Result<(), CommandError> {
    if matches!(value, Bson::Array(_)) {
        return Err(CommandError::bad_value(format!(
            "{which}: shard key field '{name}' cannot be an array"
        )));
    }
    let valid_hash = matches!(value, Bson::Int64(_) | Bson::MinKey | Bson::MaxKey);
    if kind == KeyKind::Hashed && !valid_hash {
        return Err(CommandError::new(
            ErrorCode::INVALID_OPTIONS,
            format!(
                "{which}: field '{name}' is hashed in the shard key, so its bound must be a \
                 NumberLong hash, MinKey or MaxKey, not {value}"
            ),
        ));
    }
    Ok(())
}

/// The whole-key range `[min, max)` of an `updateZoneKeyRange` for `zone`.
pub fn parse_range(
    key: &ShardKeyPattern,
    min: &Document,
    max: &Document,
    zone: &str,
) -> Result<ZoneRange, CommandError> {
    let min = full_bound(key, min, "min")?;
    let max = full_bound(key, max, "max")?;
    if compare_bounds(&min, &max) != Ordering::Less {
        return Err(CommandError::bad_value(format!(
            "min {min} must be less than max {max}"
        )));
    }
    Ok(ZoneRange {
        min,
        max,
        zone: zone.to_owned(),
    })
}

/// What adding `range` to the existing ranges of its namespace does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeAddition {
    /// The range is new: insert it.
    Insert,
    /// The very same range with the same zone is already there: nothing to do.
    AlreadyPresent,
}

/// Decides whether `range` can join `existing` (the namespace's ranges): it must overlap none,
/// except an identical range of the same zone (MongoDB accepts that repeat as a no-op).
pub fn check_addition(
    existing: &[ZoneRange],
    range: &ZoneRange,
) -> Result<RangeAddition, CommandError> {
    for other in existing {
        if !other.overlaps(range) {
            continue;
        }
        if other.same_bounds(range) && other.zone == range.zone {
            return Ok(RangeAddition::AlreadyPresent);
        }
        return Err(CommandError::new(
            ErrorCode::RANGE_OVERLAP_CONFLICT,
            format!(
                "Zone range: [{}, {}) on {} is overlapping with existing: [{}, {}) on {}",
                range.min, range.max, range.zone, other.min, other.max, other.zone
            ),
        ));
    }
    Ok(RangeAddition::Insert)
}

/// The zones a `config.shards` document carries.
pub fn shard_zones(shard: &Document) -> Vec<String> {
    shard
        .get_array("tags")
        .map(|tags| {
            tags.iter()
                .filter_map(Bson::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether any shard carries `zone`.
pub fn zone_exists(shards: &[Document], zone: &str) -> bool {
    shards
        .iter()
        .any(|shard| shard_zones(shard).iter().any(|z| z == zone))
}

/// Whether `shard` is the only shard of `zone` while `zone` still has ranges (`tags` are
/// `config.tags` documents of every namespace): removing the shard from the zone, or the
/// shard itself, would leave those ranges with nowhere to live.
pub fn shard_required_by_zone(
    shards: &[Document],
    tags: &[Document],
    shard: &ShardId,
    zone: &str,
) -> bool {
    let has_ranges = tags.iter().any(|tag| tag.get_str("tag") == Ok(zone));
    if !has_ranges {
        return false;
    }
    let holders: Vec<&str> = shards
        .iter()
        .filter(|doc| shard_zones(doc).iter().any(|z| z == zone))
        .filter_map(|doc| doc.get_str("_id").ok())
        .collect();
    holders == [shard.as_str()]
}

/// A `config.tags` document.
pub fn tag_document(ns: &Namespace, range: &ZoneRange) -> Document {
    doc! {
        "_id": ObjectId::new(),
        "ns": ns.to_string(),
        "min": range.min.clone(),
        "max": range.max.clone(),
        "tag": range.zone.clone(),
    }
}

fn bound_field<'a>(command: &'a Document, field: &str) -> Result<&'a Document, CommandError> {
    match command.get(field) {
        Some(Bson::Document(bound)) => Ok(bound),
        Some(other) => Err(CommandError::type_mismatch(field, "object", other)),
        None => Err(CommandError::missing_field("updateZoneKeyRange", field)),
    }
}

impl ConfigServer {
    /// Reads the `config.shards` document of `shard`, or `ShardNotFound`.
    async fn shard_document(
        &self,
        core: &Arc<MemberCore>,
        shard: &ShardId,
    ) -> Result<Document, CommandError> {
        match store::find_one(core, coll::SHARDS, shard.as_str()).await? {
            Some(doc) => Ok(doc),
            None => Err(CommandError::new(
                ErrorCode::SHARD_NOT_FOUND,
                format!("shard {shard} does not exist"),
            )),
        }
    }

    /// `addShardToZone: shard, zone`.
    pub(crate) async fn add_shard_to_zone(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let shard = ShardId::new(string_field(command, "addShardToZone")?)?;
        let zone = string_field(command, "zone")?;
        validate_zone_name(zone)?;
        let mut shard_doc = self.shard_document(core, &shard).await?;
        let mut zones = shard_zones(&shard_doc);
        if zones.iter().any(|z| z == zone) {
            return Ok(doc! {"ok": 1.0});
        }
        if zones.len() >= SHARD_ZONES_MAX {
            return Err(CommandError::bad_value(format!(
                "shard {shard} already belongs to {SHARD_ZONES_MAX} zones"
            )));
        }
        zones.push(zone.to_owned());
        shard_doc.insert("tags", zones);
        self.commit(core, vec![put(coll::SHARDS, shard_doc)])
            .await?;
        tracing::info!(shard = %shard, zone, "shard added to zone");
        Ok(doc! {"ok": 1.0})
    }

    /// `removeShardFromZone: shard, zone`.
    pub(crate) async fn remove_shard_from_zone(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let shard = ShardId::new(string_field(command, "removeShardFromZone")?)?;
        let zone = string_field(command, "zone")?;
        validate_zone_name(zone)?;
        let mut shard_doc = self.shard_document(core, &shard).await?;
        let mut zones = shard_zones(&shard_doc);
        if !zones.iter().any(|z| z == zone) {
            return Ok(doc! {"ok": 1.0});
        }
        let shards = store::find_all(core, coll::SHARDS, doc! {}).await?;
        let tags = store::find_all(core, coll::TAGS, doc! {"tag": zone}).await?;
        if shard_required_by_zone(&shards, &tags, &shard, zone) {
            return Err(CommandError::new(
                ErrorCode::ZONE_STILL_IN_USE,
                "cannot remove a shard from zone if a chunk range is associated with it",
            ));
        }
        zones.retain(|z| z != zone);
        shard_doc.insert("tags", zones);
        self.commit(core, vec![put(coll::SHARDS, shard_doc)])
            .await?;
        tracing::info!(shard = %shard, zone, "shard removed from zone");
        Ok(doc! {"ok": 1.0})
    }

    /// `updateZoneKeyRange: ns, min, max, zone` (`zone: null` removes the range).
    pub(crate) async fn update_zone_key_range(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = Namespace::parse(string_field(command, "updateZoneKeyRange")?)?;
        let min = bound_field(command, "min")?;
        let max = bound_field(command, "max")?;
        let zone = match command.get("zone") {
            Some(Bson::String(zone)) => {
                validate_zone_name(zone)?;
                Some(zone.as_str())
            }
            Some(Bson::Null) => None,
            Some(other) => return Err(CommandError::type_mismatch("zone", "string", other)),
            None => return Err(CommandError::missing_field("updateZoneKeyRange", "zone")),
        };
        let collection = self.load_collection(core, &ns).await?;
        let range = parse_range(&collection.map.key, min, max, zone.unwrap_or(""))?;
        let existing = store::find_all(core, coll::TAGS, doc! {"ns": ns.to_string()}).await?;
        match zone {
            Some(zone) => self.add_range(core, &ns, &existing, &range, zone).await,
            None => self.remove_range(core, &ns, &existing, &range).await,
        }
    }

    async fn add_range(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        existing: &[Document],
        range: &ZoneRange,
        zone: &str,
    ) -> Result<Document, CommandError> {
        let shards = store::find_all(core, coll::SHARDS, doc! {}).await?;
        if !zone_exists(&shards, zone) {
            return Err(CommandError::new(
                ErrorCode::ZONE_NOT_FOUND,
                format!("zone {zone} does not exist"),
            ));
        }
        let ranges = existing
            .iter()
            .map(ZoneRange::from_document)
            .collect::<Result<Vec<_>, _>>()?;
        if check_addition(&ranges, range)? == RangeAddition::AlreadyPresent {
            return Ok(doc! {"ok": 1.0});
        }
        self.commit(core, vec![put(coll::TAGS, tag_document(ns, range))])
            .await?;
        tracing::info!(ns = %ns, min = %range.min, max = %range.max, zone, "zone range added");
        Ok(doc! {"ok": 1.0})
    }

    async fn remove_range(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        existing: &[Document],
        range: &ZoneRange,
    ) -> Result<Document, CommandError> {
        let mut ops = Vec::new();
        for tag in existing {
            if ZoneRange::from_document(tag)?.same_bounds(range)
                && let Some(id) = tag.get("_id")
            {
                ops.push(AtomicOp::Delete {
                    coll: coll::TAGS.into(),
                    id: id.clone(),
                });
            }
        }
        if ops.is_empty() {
            return Ok(doc! {"ok": 1.0});
        }
        self.commit(core, ops).await?;
        tracing::info!(ns = %ns, min = %range.min, max = %range.max, "zone range removed");
        Ok(doc! {"ok": 1.0})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pattern: Document) -> ShardKeyPattern {
        ShardKeyPattern::parse(&pattern).unwrap()
    }

    fn range(min: i32, max: i32, zone: &str) -> ZoneRange {
        ZoneRange {
            min: doc! {"k": min},
            max: doc! {"k": max},
            zone: zone.to_owned(),
        }
    }

    #[test]
    fn bounds_are_extended_to_the_whole_key_with_min_key() {
        let compound = key(doc! {"a": 1, "b": 1});
        let range = parse_range(&compound, &doc! {"a": 1}, &doc! {"a": 5}, "z").unwrap();
        assert_eq!(range.min, doc! {"a": 1, "b": Bson::MinKey});
        assert_eq!(range.max, doc! {"a": 5, "b": Bson::MinKey});
        let whole = parse_range(
            &compound,
            &doc! {"a": 1, "b": 2},
            &doc! {"a": 1, "b": 3},
            "z",
        );
        assert_eq!(whole.unwrap().max, doc! {"a": 1, "b": 3});
    }

    #[test]
    fn bounds_must_be_a_prefix_of_the_shard_key() {
        let compound = key(doc! {"a": 1, "b": 1});
        let error = parse_range(&compound, &doc! {"b": 1}, &doc! {"b": 5}, "z").unwrap_err();
        assert_eq!(error.code, ErrorCode::SHARD_KEY_NOT_FOUND);
        let error = parse_range(&compound, &doc! {}, &doc! {"a": 5}, "z").unwrap_err();
        assert_eq!(error.code, ErrorCode::SHARD_KEY_NOT_FOUND);
        let longer = doc! {"a": 1, "b": 1, "c": 1};
        let error = parse_range(&compound, &doc! {"a": 0}, &longer, "z").unwrap_err();
        assert_eq!(error.code, ErrorCode::SHARD_KEY_NOT_FOUND);
        let error = parse_range(&compound, &doc! {"a": [1]}, &doc! {"a": 5}, "z").unwrap_err();
        assert_eq!(error.code, ErrorCode::BAD_VALUE);
    }

    #[test]
    fn min_must_be_below_max() {
        let single = key(doc! {"k": 1});
        assert!(parse_range(&single, &doc! {"k": 5}, &doc! {"k": 5}, "z").is_err());
        assert!(parse_range(&single, &doc! {"k": 6}, &doc! {"k": 5}, "z").is_err());
        let ok = parse_range(&single, &doc! {"k": Bson::MinKey}, &doc! {"k": 5}, "z");
        assert!(ok.is_ok());
    }

    #[test]
    fn hashed_bounds_are_hashes_or_sentinels() {
        let hashed = key(doc! {"h": "hashed"});
        let error = parse_range(&hashed, &doc! {"h": 1}, &doc! {"h": 5_i64}, "z").unwrap_err();
        assert_eq!(error.code, ErrorCode::INVALID_OPTIONS);
        let ok = parse_range(&hashed, &doc! {"h": -5_i64}, &doc! {"h": Bson::MaxKey}, "z");
        assert!(ok.is_ok());
    }

    #[test]
    fn overlapping_ranges_are_refused_but_an_identical_repeat_is_a_no_op() {
        let existing = vec![range(0, 10, "a"), range(20, 30, "b")];
        assert_eq!(
            check_addition(&existing, &range(10, 20, "c")).unwrap(),
            RangeAddition::Insert
        );
        assert_eq!(
            check_addition(&existing, &range(0, 10, "a")).unwrap(),
            RangeAddition::AlreadyPresent
        );
        for conflicting in [
            range(0, 10, "b"),
            range(5, 15, "a"),
            range(-5, 1, "a"),
            range(25, 26, "b"),
            range(-100, 100, "c"),
        ] {
            let error = check_addition(&existing, &conflicting).unwrap_err();
            assert_eq!(
                error.code,
                ErrorCode::RANGE_OVERLAP_CONFLICT,
                "{conflicting:?}"
            );
        }
    }

    #[test]
    fn a_zone_exists_while_a_shard_carries_it() {
        let shards = vec![
            doc! {"_id": "s0", "tags": ["a", "b"]},
            doc! {"_id": "s1", "tags": ["b"]},
            doc! {"_id": "s2"},
        ];
        assert!(zone_exists(&shards, "a"));
        assert!(!zone_exists(&shards, "c"));
        let s0 = ShardId::new("s0").unwrap();
        let s1 = ShardId::new("s1").unwrap();
        let tags = vec![
            doc! {"ns": "d.c", "tag": "a", "min": {"k": 0}, "max": {"k": 1}},
            doc! {"ns": "d.c", "tag": "b", "min": {"k": 1}, "max": {"k": 2}},
        ];
        assert!(shard_required_by_zone(&shards, &tags, &s0, "a"));
        assert!(!shard_required_by_zone(&shards, &tags, &s0, "b"));
        assert!(!shard_required_by_zone(&shards, &tags, &s1, "b"));
        assert!(!shard_required_by_zone(&shards, &[], &s0, "a"));
    }

    #[test]
    fn zone_names_are_checked() {
        assert!(validate_zone_name("").is_err());
        assert!(validate_zone_name(&"x".repeat(ZONE_NAME_BYTES_MAX + 1)).is_err());
        assert!(validate_zone_name("NYC").is_ok());
    }

    #[test]
    fn tag_documents_round_trip() {
        let ns = Namespace::parse("d.c").unwrap();
        let original = range(1, 2, "a");
        let tag = tag_document(&ns, &original);
        assert_eq!(tag.get_str("ns").unwrap(), "d.c");
        assert_eq!(ZoneRange::from_document(&tag).unwrap(), original);
    }
}
