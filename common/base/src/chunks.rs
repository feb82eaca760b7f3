//! Chunk maps and routing decisions, free of I/O: which shard owns a shard-key value, which
//! shards a filter must reach, and how a split or a move rewrites the map.
//!
//! A chunk covers `[min, max)` of the shard-key space; the chunks of a collection tile the
//! whole space from `{k: MinKey}` to `{k: MaxKey}` without gaps or overlaps. The config server
//! applies splits and moves with the functions here and the router routes with them, so the two
//! can never disagree about a boundary.

use std::cmp::Ordering;

use bson::{Bson, Document, oid::ObjectId};

use crate::{
    bsonorder::{compare, compare_key_values},
    error::{CommandError, ErrorCode},
    ids::{ChunkVersion, Epoch, ShardId, ShardVersion},
};

/// How one shard-key field is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Ranged ascending (`1`). MongoDB only accepts 1 for ranged shard keys.
    Ascending,
    /// Hashed (`"hashed"`).
    Hashed,
}

/// A shard key pattern such as `{k: 1}` or `{a: 1, b: 1}`. Invariant: at least one field, at
/// most one hashed field, no field named `_id.x`-style duplicates.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardKeyPattern {
    /// The fields in key order, each with its kind.
    pub fields: Vec<(String, KeyKind)>,
}

impl ShardKeyPattern {
    /// Parses `{field: 1 | "hashed", ...}` and validates it as `shardCollection` does.
    pub fn parse(key: &Document) -> Result<ShardKeyPattern, CommandError> {
        if key.is_empty() {
            return Err(CommandError::bad_value(
                "shard key pattern must not be empty",
            ));
        }
        let mut fields = Vec::with_capacity(key.len());
        for (name, value) in key {
            if name.is_empty() || name.starts_with('$') || name.split('.').any(str::is_empty) {
                return Err(CommandError::bad_value(format!(
                    "invalid shard key field '{name}'"
                )));
            }
            let kind = match value {
                Bson::String(s) if s == "hashed" => KeyKind::Hashed,
                Bson::Int32(1) | Bson::Int64(1) => KeyKind::Ascending,
                Bson::Double(v) if *v == 1.0 => KeyKind::Ascending,
                other => {
                    return Err(CommandError::bad_value(format!(
                        "Unsupported shard key pattern {key}: field '{name}' is {other}; \
                         only 1 and \"hashed\" are allowed"
                    )));
                }
            };
            fields.push((name.clone(), kind));
        }
        let n_hashed = fields
            .iter()
            .filter(|(_, kind)| *kind == KeyKind::Hashed)
            .count();
        if n_hashed > 1 {
            return Err(CommandError::bad_value(
                "a shard key may have at most one hashed field",
            ));
        }
        Ok(ShardKeyPattern { fields })
    }

    /// The pattern as a document (`{k: 1}`).
    pub fn to_document(&self) -> Document {
        let mut pattern = Document::new();
        for (name, kind) in &self.fields {
            match kind {
                KeyKind::Ascending => pattern.insert(name.clone(), 1),
                KeyKind::Hashed => pattern.insert(name.clone(), "hashed"),
            };
        }
        pattern
    }

    /// Whether the first field is hashed: such a key spreads an empty collection over every
    /// shard from the start (MongoDB's initial chunks of a hashed shard key).
    pub fn is_hashed_prefix(&self) -> bool {
        self.fields
            .first()
            .is_some_and(|(_, kind)| *kind == KeyKind::Hashed)
    }

    /// The initial chunks of an empty collection sharded on a hashed-prefix key: `count`
    /// chunks of equal width over the 64-bit hash space, dealt round-robin to `shards`, with
    /// versions 1|0, 1|1, ... in key order. `None` when the key has no hashed prefix, no shard
    /// is given or `count` is 0.
    pub fn hashed_initial_chunks(
        &self,
        shards: &[ShardId],
        count: usize,
        epoch: Epoch,
    ) -> Option<Vec<Chunk>> {
        if !self.is_hashed_prefix() || shards.is_empty() || count == 0 {
            return None;
        }
        let bound = |hash: Option<i64>| -> Document {
            self.fields
                .iter()
                .enumerate()
                .map(|(i, (name, _))| {
                    let value = match (i, hash) {
                        (0, Some(hash)) => Bson::Int64(hash),
                        _ => Bson::MinKey,
                    };
                    (name.clone(), value)
                })
                .collect()
        };
        let width = (1_i128 << 64) / count as i128;
        let mut chunks = Vec::with_capacity(count);
        for i in 0..count {
            let lower = (i > 0).then(|| (i64::MIN as i128 + width * i as i128) as i64);
            let min = bound(lower);
            let max = if i + 1 == count {
                self.global_max()
            } else {
                bound(Some((i64::MIN as i128 + width * (i as i128 + 1)) as i64))
            };
            chunks.push(Chunk {
                min: if i == 0 { self.global_min() } else { min },
                max,
                shard: shards[i % shards.len()].clone(),
                version: ChunkVersion {
                    epoch,
                    major: 1,
                    minor: u32::try_from(i).unwrap_or(u32::MAX),
                },
            });
        }
        Some(chunks)
    }

    /// Whether any field is hashed.
    pub fn is_hashed(&self) -> bool {
        self.fields.iter().any(|(_, kind)| *kind == KeyKind::Hashed)
    }

    /// The key with every field at `MinKey`: the lower bound of the first chunk.
    pub fn global_min(&self) -> Document {
        self.fields
            .iter()
            .map(|(name, _)| (name.clone(), Bson::MinKey))
            .collect()
    }

    /// The key with every field at `MaxKey`: the upper bound of the last chunk.
    pub fn global_max(&self) -> Document {
        self.fields
            .iter()
            .map(|(name, _)| (name.clone(), Bson::MaxKey))
            .collect()
    }

    /// Extracts a document's shard key. A missing field counts as null (MongoDB 4.4+). An array
    /// value is refused: shard key values may not be arrays.
    pub fn extract(&self, document: &Document) -> Result<Document, CommandError> {
        let mut key = Document::new();
        for (name, kind) in &self.fields {
            let value = key_path_value(document, name)?
                .cloned()
                .unwrap_or(Bson::Null);
            let value = match kind {
                KeyKind::Ascending => value,
                KeyKind::Hashed => Bson::Int64(hash_key_value(&value)),
            };
            key.insert(name.clone(), value);
        }
        Ok(key)
    }

    /// Checks that a split point or bound names exactly the key's fields, in order.
    pub fn validate_key_shape(&self, key: &Document) -> Result<(), CommandError> {
        let names: Vec<&str> = key.keys().map(String::as_str).collect();
        let expected: Vec<&str> = self.fields.iter().map(|(name, _)| name.as_str()).collect();
        if names != expected {
            return Err(CommandError::bad_value(format!(
                "key {key} does not match the shard key pattern {}",
                self.to_document()
            )));
        }
        Ok(())
    }
}

/// The value of a shard-key path in a document: `None` when missing. An array anywhere along the
/// path (or as the value) is refused, as MongoDB refuses arrays in shard keys: an array would
/// let one document match several key values.
fn key_path_value<'a>(
    document: &'a Document,
    path: &str,
) -> Result<Option<&'a Bson>, CommandError> {
    let refuse = || {
        CommandError::new(
            ErrorCode::BAD_VALUE,
            format!("Shard key cannot contain an array: field '{path}'"),
        )
    };
    let mut current = document;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Some(value) = current.get(part) else {
            return Ok(None);
        };
        match value {
            Bson::Array(_) => return Err(refuse()),
            Bson::Document(inner) if parts.peek().is_some() => current = inner,
            _ if parts.peek().is_some() => return Ok(None),
            _ => return Ok(Some(value)),
        }
    }
    Ok(None)
}

/// Follows a dotted path through embedded documents (not arrays: shard keys never contain them).
pub fn lookup_path<'a>(document: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut current = document.get(first)?;
    for part in parts {
        match current {
            Bson::Document(inner) => current = inner.get(part)?,
            _ => return None,
        }
    }
    Some(current)
}

/// The hash of a shard-key value for hashed keys: a stable 64-bit hash of the value's canonical
/// BSON bytes (not MongoDB's MD5-based hash; stability across versions is what matters here).
pub fn hash_key_value(value: &Bson) -> i64 {
    // FNV-1a over a canonical encoding: numbers that compare equal hash equal.
    let mut bytes = Vec::new();
    canonical_bytes(value, &mut bytes);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

fn canonical_bytes(value: &Bson, out: &mut Vec<u8>) {
    out.extend_from_slice(&crate::bsonorder::canonical_rank(value).to_le_bytes());
    match value {
        Bson::Int32(v) => out.extend_from_slice(&f64::from(*v).to_le_bytes()),
        Bson::Int64(v) => out.extend_from_slice(&(*v as f64).to_le_bytes()),
        Bson::Double(v) => out.extend_from_slice(&v.to_le_bytes()),
        Bson::String(s) => out.extend_from_slice(s.as_bytes()),
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// One chunk: `[min, max)` owned by `shard`.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// Inclusive lower bound (a shard-key-shaped document).
    pub min: Document,
    /// Exclusive upper bound. Invariant: `min < max`.
    pub max: Document,
    /// The owning shard.
    pub shard: ShardId,
    /// The version this chunk got at its last split or move.
    pub version: ChunkVersion,
}

impl Chunk {
    /// Whether `key` lies in `[min, max)`.
    pub fn contains(&self, key: &Document) -> bool {
        compare_key_values(&self.min, key) != Ordering::Greater
            && compare_key_values(key, &self.max) == Ordering::Less
    }
}

/// Where a request must go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targeting {
    /// Exactly these shards (one, for a filter that fixes the shard key), sorted, no duplicates.
    Shards(Vec<ShardId>),
}

/// The chunks of one sharded collection, sorted by `min`. Invariant: they tile the key space
/// from `global_min` to `global_max` with no gap and no overlap.
#[derive(Clone, Debug)]
pub struct ChunkMap {
    /// The shard key.
    pub key: ShardKeyPattern,
    /// The chunks, sorted by `min`.
    pub chunks: Vec<Chunk>,
}

impl ChunkMap {
    /// Builds a map and checks that the chunks tile the key space.
    pub fn new(key: ShardKeyPattern, mut chunks: Vec<Chunk>) -> Result<ChunkMap, CommandError> {
        chunks.sort_by(|a, b| compare_key_values(&a.min, &b.min));
        let map = ChunkMap { key, chunks };
        map.check_tiling()?;
        Ok(map)
    }

    fn check_tiling(&self) -> Result<(), CommandError> {
        let broken = |why: String| CommandError::internal(format!("chunk map is broken: {why}"));
        let first = self
            .chunks
            .first()
            .ok_or_else(|| broken("no chunks".into()))?;
        let last = self
            .chunks
            .last()
            .ok_or_else(|| broken("no chunks".into()))?;
        if compare_key_values(&first.min, &self.key.global_min()) != Ordering::Equal {
            return Err(broken(format!("first chunk starts at {}", first.min)));
        }
        if compare_key_values(&last.max, &self.key.global_max()) != Ordering::Equal {
            return Err(broken(format!("last chunk ends at {}", last.max)));
        }
        for pair in self.chunks.windows(2) {
            if compare_key_values(&pair[0].max, &pair[1].min) != Ordering::Equal {
                return Err(broken(format!("gap or overlap at {}", pair[0].max)));
            }
        }
        for chunk in &self.chunks {
            if compare_key_values(&chunk.min, &chunk.max) != Ordering::Less {
                return Err(broken(format!("empty chunk at {}", chunk.min)));
            }
        }
        Ok(())
    }

    /// The index of the chunk holding `key`.
    pub fn chunk_index_for_key(&self, key: &Document) -> usize {
        // The first chunk whose min is > key, minus one; chunks tile the space so it exists.
        let upper = self
            .chunks
            .partition_point(|chunk| compare_key_values(&chunk.min, key) != Ordering::Greater);
        upper.saturating_sub(1)
    }

    /// The chunk holding `key`.
    pub fn chunk_for_key(&self, key: &Document) -> &Chunk {
        let index = self.chunk_index_for_key(key);
        debug_assert!(self.chunks[index].contains(key));
        &self.chunks[index]
    }

    /// Every shard owning at least one chunk, sorted.
    pub fn shards(&self) -> Vec<ShardId> {
        let mut shards: Vec<ShardId> = self.chunks.iter().map(|c| c.shard.clone()).collect();
        shards.sort();
        shards.dedup();
        shards
    }

    /// The highest chunk version: the collection version.
    pub fn collection_version(&self) -> Option<ChunkVersion> {
        self.chunks
            .iter()
            .map(|c| c.version)
            .max_by_key(|v| (v.major, v.minor))
    }

    /// The shards a query with `filter` must reach. A filter that fixes every shard-key field
    /// by equality (or `$in` over a single-field key) reaches only the owners of those values;
    /// anything else reaches every shard owning a chunk.
    pub fn target_filter(&self, filter: &Document) -> Targeting {
        match self.equality_keys(filter) {
            Some(keys) => {
                let mut shards: Vec<ShardId> = keys
                    .iter()
                    .map(|key| self.chunk_for_key(key).shard.clone())
                    .collect();
                shards.sort();
                shards.dedup();
                Targeting::Shards(shards)
            }
            None => Targeting::Shards(self.shards()),
        }
    }

    /// The shard-key values a filter pins down, or `None` when it does not pin them all.
    pub fn equality_keys(&self, filter: &Document) -> Option<Vec<Document>> {
        const IN_VALUES_MAX: usize = 1_000;
        let mut per_field: Vec<Vec<Bson>> = Vec::with_capacity(self.key.fields.len());
        for (name, _) in &self.key.fields {
            let values = equality_values(filter, name)?;
            per_field.push(values);
        }
        // The cross product of per-field values, bounded so `$in` lists cannot explode.
        let mut keys: Vec<Vec<Bson>> = vec![Vec::new()];
        for values in &per_field {
            let mut next = Vec::with_capacity(keys.len() * values.len());
            for prefix in &keys {
                for value in values {
                    let mut key = prefix.clone();
                    key.push(value.clone());
                    next.push(key);
                }
            }
            if next.len() > IN_VALUES_MAX {
                return None;
            }
            keys = next;
        }
        let documents = keys
            .into_iter()
            .map(|values| {
                let raw: Document = self
                    .key
                    .fields
                    .iter()
                    .zip(values)
                    .map(|((name, _), value)| (name.clone(), value))
                    .collect();
                self.key.extract_from_flat(&raw)
            })
            .collect();
        Some(documents)
    }

    /// Splits the chunk containing `at` into `[min, at)` and `[at, max)`. Both halves keep the
    /// owner and get minor versions above the current collection version. `at` may hold MinKey
    /// or MaxKey in some fields (zone boundaries of compound keys look like `{a: 5, b: MinKey}`)
    /// but may not be the key space's own bounds.
    pub fn split_at(&mut self, at: &Document) -> Result<(), CommandError> {
        self.key.validate_key_shape(at)?;
        let global_bound = compare_key_values(at, &self.key.global_min()) == Ordering::Equal
            || compare_key_values(at, &self.key.global_max()) == Ordering::Equal;
        if global_bound {
            return Err(CommandError::bad_value(format!(
                "cannot split on {at}: MinKey and MaxKey are the bounds of the key space"
            )));
        }
        let index = self.chunk_index_for_key(at);
        let chunk = self.chunks[index].clone();
        if compare_key_values(&chunk.min, at) == Ordering::Equal {
            return Err(CommandError::bad_value(format!(
                "cannot split on {at}: it is already a chunk boundary"
            )));
        }
        let version = self
            .collection_version()
            .ok_or_else(|| CommandError::internal("a sharded collection has at least one chunk"))?;
        let lower = Chunk {
            min: chunk.min.clone(),
            max: at.clone(),
            shard: chunk.shard.clone(),
            version: ChunkVersion {
                minor: version.minor + 1,
                ..version
            },
        };
        let upper = Chunk {
            min: at.clone(),
            max: chunk.max.clone(),
            shard: chunk.shard,
            version: ChunkVersion {
                minor: version.minor + 2,
                ..version
            },
        };
        self.chunks.splice(index..=index, [lower, upper]);
        self.check_tiling()
    }

    /// Merges the chunks that exactly cover `[min, max)` into one (`mergeChunks`): they must all
    /// be on one shard, and there must be at least two. The merged chunk gets the next minor
    /// version. Returns the index range the merged chunks occupied.
    pub fn merge(
        &mut self,
        min: &Document,
        max: &Document,
    ) -> Result<std::ops::Range<usize>, CommandError> {
        self.key.validate_key_shape(min)?;
        self.key.validate_key_shape(max)?;
        let first = self
            .chunks
            .iter()
            .position(|c| compare_key_values(&c.min, min) == Ordering::Equal);
        let last = self
            .chunks
            .iter()
            .position(|c| compare_key_values(&c.max, max) == Ordering::Equal);
        let (Some(first), Some(last)) = (first, last) else {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                format!(
                    "could not merge chunks: [{min}, {max}) does not start and end at chunk boundaries"
                ),
            ));
        };
        if last <= first {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                format!("could not merge chunks: [{min}, {max}) covers fewer than two chunks"),
            ));
        }
        let shard = self.chunks[first].shard.clone();
        if let Some(other) = self.chunks[first..=last].iter().find(|c| c.shard != shard) {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                format!(
                    "could not merge chunks: [{min}, {max}) spans shards {shard} and {}",
                    other.shard
                ),
            ));
        }
        let version = self
            .collection_version()
            .ok_or_else(|| CommandError::internal("a sharded collection has at least one chunk"))?;
        let merged = Chunk {
            min: self.chunks[first].min.clone(),
            max: self.chunks[last].max.clone(),
            shard,
            version: ChunkVersion {
                minor: version.minor + 1,
                ..version
            },
        };
        self.chunks.splice(first..=last, [merged]);
        self.check_tiling()?;
        Ok(first..last + 1)
    }

    /// Gives the chunk containing `key` to `to`. The moved chunk gets version `(M+1, 0)`, `M`
    /// being the collection's major version, and, when the donor keeps chunks, its first
    /// remaining chunk (the "control chunk") gets `(M+1, 1)`: so the shard versions of both
    /// the donor and the recipient change, and a router that missed the move is refused by
    /// either. The caller must persist every chunk [`ChunkMove`] names.
    pub fn move_chunk(&mut self, key: &Document, to: &ShardId) -> Result<ChunkMove, CommandError> {
        let index = self.chunk_index_for_key(key);
        if &self.chunks[index].shard == to {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                format!("chunk is already on shard '{to}'"),
            ));
        }
        let version = self
            .collection_version()
            .ok_or_else(|| CommandError::internal("a sharded collection has at least one chunk"))?;
        let major = version.major + 1;
        let donor = std::mem::replace(&mut self.chunks[index].shard, to.clone());
        self.chunks[index].version = ChunkVersion {
            major,
            minor: 0,
            ..version
        };
        let control = self.chunks.iter().position(|chunk| chunk.shard == donor);
        if let Some(control) = control {
            self.chunks[control].version = ChunkVersion {
                major,
                minor: 1,
                ..version
            };
        }
        Ok(ChunkMove {
            moved: index,
            control,
        })
    }

    /// The version of `shard`'s part of the collection: the epoch and the highest major version
    /// among its chunks, 0 when it owns none.
    pub fn shard_version(&self, shard: &ShardId) -> ShardVersion {
        // The tiling invariant guarantees a first chunk; the zero epoch of a broken, empty map
        // matches no shard's metadata, so such a request is refused rather than misrouted.
        let epoch = self
            .chunks
            .first()
            .map_or(Epoch(ObjectId::from_bytes([0; 12])), |chunk| {
                chunk.version.epoch
            });
        let major = self
            .chunks
            .iter()
            .filter(|chunk| &chunk.shard == shard)
            .map(|chunk| chunk.version.major)
            .max()
            .unwrap_or(0);
        ShardVersion { epoch, major }
    }
}

/// The chunks a [`ChunkMap::move_chunk`] changed, by index in [`ChunkMap::chunks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "every changed chunk must be persisted"]
pub struct ChunkMove {
    /// The moved chunk, now owned by the recipient.
    pub moved: usize,
    /// The donor's control chunk, whose version was bumped; `None` when the donor has no chunk
    /// left.
    pub control: Option<usize>,
}

impl ShardKeyPattern {
    /// Applies hashing to a key whose fields hold raw values (e.g. from a filter).
    fn extract_from_flat(&self, raw: &Document) -> Document {
        let mut key = Document::new();
        for (name, kind) in &self.fields {
            let value = raw.get(name).cloned().unwrap_or(Bson::Null);
            let value = match kind {
                KeyKind::Ascending => value,
                KeyKind::Hashed => Bson::Int64(hash_key_value(&value)),
            };
            key.insert(name.clone(), value);
        }
        key
    }
}

/// The values a filter requires `field` to equal: `{field: v}`, `{field: {$eq: v}}`,
/// `{field: {$in: [...]}}`, or the same inside a top-level `$and`. `None` otherwise.
fn equality_values(filter: &Document, field: &str) -> Option<Vec<Bson>> {
    if let Some(values) = filter.get(field).and_then(values_of_condition) {
        return Some(values);
    }
    let clauses = filter.get_array("$and").ok()?;
    clauses
        .iter()
        .filter_map(Bson::as_document)
        .find_map(|clause| equality_values(clause, field))
}

fn values_of_condition(value: &Bson) -> Option<Vec<Bson>> {
    match value {
        // Regex, arrays and null match more than one stored key (null also matches missing).
        Bson::RegularExpression(_) | Bson::Array(_) | Bson::Null | Bson::Undefined => None,
        Bson::Document(condition) => {
            let first = condition.keys().next()?;
            if !first.starts_with('$') {
                return Some(vec![value.clone()]);
            }
            if condition.len() != 1 {
                return None;
            }
            if let Some(eq) = condition.get("$eq") {
                return values_of_condition(eq);
            }
            let list = condition.get_array("$in").ok()?;
            let mut values = Vec::with_capacity(list.len());
            for item in list {
                values.extend(values_of_condition(item)?);
            }
            Some(values)
        }
        other => Some(vec![other.clone()]),
    }
}

/// Orders two shard-key bounds; exposed for callers that sort bounds.
pub fn compare_bounds(a: &Document, b: &Document) -> Ordering {
    compare_key_values(a, b)
}

/// Whether a value is MinKey or MaxKey (a chunk bound, not a real key).
pub fn is_bound_sentinel(value: &Bson) -> bool {
    compare(value, &Bson::MinKey) == Ordering::Equal
        || compare(value, &Bson::MaxKey) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use bson::{doc, oid::ObjectId};

    use super::*;

    #[test]
    fn merges_adjacent_chunks_of_one_shard() {
        let key = ShardKeyPattern::parse(&bson::doc! {"k": 1}).unwrap();
        let epoch = Epoch(bson::oid::ObjectId::new());
        let a = ShardId::new("a").unwrap();
        let whole = Chunk {
            min: key.global_min(),
            max: key.global_max(),
            shard: a.clone(),
            version: ChunkVersion::initial(epoch),
        };
        let mut map = ChunkMap::new(key.clone(), vec![whole]).unwrap();
        map.split_at(&bson::doc! {"k": 10}).unwrap();
        map.split_at(&bson::doc! {"k": 20}).unwrap();
        let _ = map
            .move_chunk(&bson::doc! {"k": 25}, &ShardId::new("b").unwrap())
            .unwrap();
        // [Min,10) and [10,20) are on a; [20,Max) on b.
        let across = map.merge(&key.global_min(), &key.global_max());
        assert!(across.is_err());
        let not_boundary = map.merge(&key.global_min(), &bson::doc! {"k": 15});
        assert!(not_boundary.is_err());
        let single = map.merge(&key.global_min(), &bson::doc! {"k": 10});
        assert!(single.is_err());
        let before = map.collection_version().unwrap();
        let range = map.merge(&key.global_min(), &bson::doc! {"k": 20}).unwrap();
        assert_eq!(range, 0..2);
        assert_eq!(map.chunks.len(), 2);
        assert_eq!(map.chunks[0].max, bson::doc! {"k": 20});
        assert_eq!(map.chunks[0].shard, a);
        assert!(map.chunks[0].version.minor > before.minor);
    }

    #[test]
    fn hashed_keys_get_spread_initial_chunks() {
        let key = ShardKeyPattern::parse(&bson::doc! {"k": "hashed"}).unwrap();
        let shards = [ShardId::new("a").unwrap(), ShardId::new("b").unwrap()];
        let epoch = Epoch(bson::oid::ObjectId::new());
        let chunks = key.hashed_initial_chunks(&shards, 4, epoch).unwrap();
        assert_eq!(chunks.len(), 4);
        // The chunks tile the key space (ChunkMap::new checks it) and alternate shards.
        ChunkMap::new(key.clone(), chunks.clone()).unwrap();
        assert_eq!(chunks[1].min, bson::doc! {"k": i64::MIN / 2});
        assert_eq!(chunks[2].min, bson::doc! {"k": 0_i64});
        let owners: Vec<&str> = chunks.iter().map(|c| c.shard.as_str()).collect();
        assert_eq!(owners, ["a", "b", "a", "b"]);
        let ranged = ShardKeyPattern::parse(&bson::doc! {"k": 1}).unwrap();
        assert!(ranged.hashed_initial_chunks(&shards, 4, epoch).is_none());
        assert!(key.hashed_initial_chunks(&[], 4, epoch).is_none());
    }
    use crate::ids::Epoch;

    fn map() -> ChunkMap {
        let key = ShardKeyPattern::parse(&doc! {"k": 1}).unwrap();
        let version = ChunkVersion::initial(Epoch(ObjectId::new()));
        let chunk = Chunk {
            min: key.global_min(),
            max: key.global_max(),
            shard: ShardId::new("a").unwrap(),
            version,
        };
        ChunkMap::new(key, vec![chunk]).unwrap()
    }

    #[test]
    fn split_and_move_route_keys() {
        let mut map = map();
        map.split_at(&doc! {"k": 5000}).unwrap();
        let b = ShardId::new("b").unwrap();
        let _ = map.move_chunk(&doc! {"k": 5000}, &b).unwrap();
        assert_eq!(map.chunk_for_key(&doc! {"k": 4999}).shard.as_str(), "a");
        assert_eq!(map.chunk_for_key(&doc! {"k": 5000}).shard.as_str(), "b");
        assert_eq!(map.chunk_for_key(&doc! {"k": "str"}).shard.as_str(), "b");
        assert_eq!(
            map.chunk_for_key(&doc! {"k": Bson::Null}).shard.as_str(),
            "a"
        );
        assert_eq!(map.collection_version().unwrap().major, 2);
        assert!(map.split_at(&doc! {"k": 5000}).is_err());
        assert!(map.split_at(&doc! {"k": Bson::MaxKey}).is_err());
        assert!(map.split_at(&doc! {"k": Bson::MinKey}).is_err());
        assert!(
            map.move_chunk(&doc! {"k": 1}, &ShardId::new("a").unwrap())
                .is_err()
        );
    }

    #[test]
    fn compound_keys_split_at_bounds_holding_min_key() {
        let key = ShardKeyPattern::parse(&doc! {"a": 1, "b": 1}).unwrap();
        let chunk = Chunk {
            min: key.global_min(),
            max: key.global_max(),
            shard: ShardId::new("a").unwrap(),
            version: ChunkVersion::initial(Epoch(ObjectId::new())),
        };
        let mut map = ChunkMap::new(key.clone(), vec![chunk]).unwrap();
        map.split_at(&doc! {"a": 5, "b": Bson::MinKey}).unwrap();
        map.split_at(&doc! {"a": Bson::MaxKey, "b": 1}).unwrap();
        assert_eq!(map.chunks.len(), 3);
        assert_eq!(
            map.chunk_for_key(&doc! {"a": 5, "b": 0}).min,
            doc! {"a": 5, "b": Bson::MinKey}
        );
        assert!(map.split_at(&key.global_min()).is_err());
        assert!(map.split_at(&key.global_max()).is_err());
        assert_eq!(map.chunks.len(), 3);
    }

    #[test]
    fn shard_keys_refuse_arrays_anywhere_on_the_path() {
        let key = ShardKeyPattern::parse(&doc! {"a.b": 1}).unwrap();
        assert_eq!(key.extract(&doc! {"a": {"b": 5}}).unwrap(), doc! {"a.b": 5});
        assert_eq!(
            key.extract(&doc! {"a": 1}).unwrap(),
            doc! {"a.b": Bson::Null}
        );
        assert_eq!(
            key.extract(&doc! {"x": 1}).unwrap(),
            doc! {"a.b": Bson::Null}
        );
        assert!(key.extract(&doc! {"a": [{"b": 5}]}).is_err());
        assert!(key.extract(&doc! {"a": {"b": [5]}}).is_err());
    }

    #[test]
    fn filters_target_owners() {
        let mut map = map();
        map.split_at(&doc! {"k": 10}).unwrap();
        let _ = map
            .move_chunk(&doc! {"k": 10}, &ShardId::new("b").unwrap())
            .unwrap();
        let one = |f: Document| match map.target_filter(&f) {
            Targeting::Shards(s) => s.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        };
        assert_eq!(one(doc! {"k": 3}), vec!["a"]);
        assert_eq!(one(doc! {"k": {"$eq": 30}, "x": 1}), vec!["b"]);
        assert_eq!(one(doc! {"k": {"$in": [1, 2]}}), vec!["a"]);
        assert_eq!(one(doc! {"k": {"$in": [1, 20]}}), vec!["a", "b"]);
        assert_eq!(one(doc! {"$and": [{"k": 20}]}), vec!["b"]);
        assert_eq!(one(doc! {"k": {"$gt": 3}}), vec!["a", "b"]);
        assert_eq!(one(doc! {"x": 3}), vec!["a", "b"]);
        assert_eq!(one(doc! {"k": Bson::Null}), vec!["a", "b"]);
    }

    #[test]
    fn moves_bump_the_donor_and_recipient_shard_versions() {
        let mut map = map();
        let (a, b) = (ShardId::new("a").unwrap(), ShardId::new("b").unwrap());
        map.split_at(&doc! {"k": 10}).unwrap();
        map.split_at(&doc! {"k": 20}).unwrap();
        let epoch = map.chunks[0].version.epoch;
        assert_eq!(map.shard_version(&a), ShardVersion { epoch, major: 1 });
        assert_eq!(map.shard_version(&b), ShardVersion { epoch, major: 0 });
        let moved = map.move_chunk(&doc! {"k": 15}, &b).unwrap();
        assert_eq!(moved.moved, 1);
        assert_eq!(moved.control, Some(0));
        assert_eq!(map.chunks[1].version.major, 2);
        assert_eq!(map.chunks[1].version.minor, 0);
        assert_eq!(map.chunks[0].version.major, 2);
        assert_eq!(map.chunks[0].version.minor, 1);
        assert_eq!(map.shard_version(&a).major, 2);
        assert_eq!(map.shard_version(&b).major, 2);
        // A split bumps only minor versions: no shard version changes.
        map.split_at(&doc! {"k": 5}).unwrap();
        assert_eq!(map.shard_version(&a).major, 2);
        // The donor's last chunk leaves: no control chunk, the donor's version drops to 0.
        let _ = map.move_chunk(&doc! {"k": 1}, &b).unwrap();
        let _ = map.move_chunk(&doc! {"k": 7}, &b).unwrap();
        let last = map.move_chunk(&doc! {"k": 30}, &b).unwrap();
        assert_eq!(last.control, None);
        assert_eq!(map.shard_version(&a).major, 0);
        assert_eq!(map.shard_version(&b).major, 5);
        assert_eq!(map.shard_version(&a).epoch, epoch);
    }
}
