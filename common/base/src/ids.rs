//! Identities and versions as newtypes, so a shard name can never be passed where a namespace
//! is expected and a chunk version never as a bare integer.

use std::{fmt, str::FromStr};

use bson::{Bson, Document, doc, oid::ObjectId, spec::BinarySubtype};

use crate::error::{CommandError, ErrorCode};

/// The name of a shard, which is also its replica-set name (`addShard: "rs0/host:port"` gives the
/// shard id `rs0`). Invariant: non-empty, no `/`, `,` or whitespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(String);

impl ShardId {
    /// Validates a shard name.
    pub fn new(name: &str) -> Result<ShardId, CommandError> {
        let valid = !name.is_empty()
            && !name.contains(['/', ',', '$', '\0'])
            && !name.chars().any(char::is_whitespace);
        if !valid {
            return Err(CommandError::bad_value(format!(
                "invalid shard name '{name}'"
            )));
        }
        Ok(ShardId(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `db.collection` namespace. Invariant: `db` is non-empty and has no `.`, `$`, `/`, `\`,
/// space or NUL; `coll` is non-empty and has no NUL (it may contain dots, as in MongoDB).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    /// The database name.
    pub db: String,
    /// The collection name.
    pub coll: String,
}

impl Namespace {
    /// Builds and validates a namespace.
    pub fn new(db: &str, coll: &str) -> Result<Namespace, CommandError> {
        validate_db_name(db)?;
        if coll.is_empty() || coll.contains('\0') || coll.starts_with('.') {
            return Err(CommandError::new(
                ErrorCode::INVALID_NAMESPACE,
                format!("Invalid collection name: '{coll}'"),
            ));
        }
        if coll.contains('$') && !coll.starts_with("$cmd") {
            return Err(CommandError::new(
                ErrorCode::INVALID_NAMESPACE,
                format!("Invalid collection name: '{coll}'"),
            ));
        }
        Ok(Namespace {
            db: db.to_owned(),
            coll: coll.to_owned(),
        })
    }

    /// Parses `db.coll` (the first dot separates the database).
    pub fn parse(full: &str) -> Result<Namespace, CommandError> {
        match full.split_once('.') {
            Some((db, coll)) => Namespace::new(db, coll),
            None => Err(CommandError::new(
                ErrorCode::INVALID_NAMESPACE,
                format!("Invalid namespace specified '{full}'"),
            )),
        }
    }
}

/// Checks a database name as MongoDB does.
pub fn validate_db_name(db: &str) -> Result<(), CommandError> {
    let valid =
        !db.is_empty() && db.len() < 64 && !db.contains(['.', '$', '/', '\\', ' ', '"', '\0']);
    if valid {
        Ok(())
    } else {
        Err(CommandError::new(
            ErrorCode::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        ))
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

impl FromStr for Namespace {
    type Err = CommandError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Namespace::parse(s)
    }
}

/// A collection's UUID, fixed at creation (or at `shardCollection`) and stored as BSON binary
/// subtype 4, as MongoDB does in `config.collections.uuid` and `config.chunks.uuid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CollectionUuid(pub uuid::Uuid);

impl CollectionUuid {
    /// A fresh random UUID.
    pub fn random() -> Self {
        CollectionUuid(uuid::Uuid::new_v4())
    }

    /// The BSON form (binary subtype 4).
    pub fn to_bson(self) -> Bson {
        Bson::Binary(bson::Binary {
            subtype: BinarySubtype::Uuid,
            bytes: self.0.as_bytes().to_vec(),
        })
    }

    /// Reads the BSON form back.
    pub fn from_bson(value: &Bson) -> Option<Self> {
        match value {
            Bson::Binary(bin) if bin.subtype == BinarySubtype::Uuid => {
                uuid::Uuid::from_slice(&bin.bytes).ok().map(CollectionUuid)
            }
            _ => None,
        }
    }
}

/// A collection's sharding epoch: a fresh ObjectId each time the collection is sharded (or
/// dropped and sharded again), so chunk versions of two incarnations never compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(pub ObjectId);

/// A chunk (or collection) version: `major` changes when ownership moves between shards,
/// `minor` on splits and merges. Invariant: versions only compare within one epoch.
/// Wire form: `lastmod` is a BSON Timestamp `{t: major, i: minor}`, as in MongoDB's
/// `config.chunks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkVersion {
    /// The epoch of the collection incarnation this version belongs to.
    pub epoch: Epoch,
    /// Bumped when a chunk changes owner.
    pub major: u32,
    /// Bumped on splits.
    pub minor: u32,
}

impl ChunkVersion {
    /// The first version of a freshly sharded collection.
    pub fn initial(epoch: Epoch) -> Self {
        ChunkVersion {
            epoch,
            major: 1,
            minor: 0,
        }
    }

    /// The `lastmod` timestamp form.
    pub fn to_timestamp(self) -> bson::Timestamp {
        bson::Timestamp {
            time: self.major,
            increment: self.minor,
        }
    }

    /// Builds a version from an epoch and a `lastmod` timestamp.
    pub fn from_timestamp(epoch: Epoch, ts: bson::Timestamp) -> Self {
        ChunkVersion {
            epoch,
            major: ts.time,
            minor: ts.increment,
        }
    }

    /// Orders two versions of the same epoch; `None` across epochs.
    pub fn partial_order(self, other: ChunkVersion) -> Option<std::cmp::Ordering> {
        if self.epoch != other.epoch {
            return None;
        }
        Some((self.major, self.minor).cmp(&(other.major, other.minor)))
    }
}

impl fmt::Display for ChunkVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}||{}", self.major, self.minor, self.epoch.0)
    }
}

/// The version of one shard's part of a sharded collection: the collection's epoch and the
/// highest `major` among the chunks that shard owns (0 when it owns none). Minor versions are
/// left out on purpose: splits and merges change them without changing which key ranges a
/// shard owns, so they must not make the router's requests stale.
/// Wire form (the `shardVersion` field of router-to-shard commands, and `vReceived`/`vWanted`
/// of a StaleConfig error): `{e: ObjectId(epoch), v: Timestamp{t: major, i: 0}}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardVersion {
    /// The epoch of the collection incarnation.
    pub epoch: Epoch,
    /// The highest major version of the shard's chunks; 0 when the shard owns no chunk.
    pub major: u32,
}

impl ShardVersion {
    /// The wire form `{e, v}`.
    pub fn to_document(self) -> Document {
        doc! {
            "e": self.epoch.0,
            "v": bson::Timestamp { time: self.major, increment: 0 },
        }
    }

    /// Reads the wire form back. The timestamp's increment is ignored: only `major` counts.
    pub fn from_bson(value: &Bson) -> Result<ShardVersion, CommandError> {
        let Bson::Document(version) = value else {
            return Err(CommandError::type_mismatch("shardVersion", "object", value));
        };
        let epoch = match version.get("e") {
            Some(Bson::ObjectId(epoch)) => Epoch(*epoch),
            _ => {
                return Err(CommandError::failed_to_parse(format!(
                    "shardVersion {version} needs 'e', an ObjectId"
                )));
            }
        };
        let major = match version.get("v") {
            Some(Bson::Timestamp(ts)) => ts.time,
            _ => {
                return Err(CommandError::failed_to_parse(format!(
                    "shardVersion {version} needs 'v', a Timestamp"
                )));
            }
        };
        Ok(ShardVersion { epoch, major })
    }
}

impl fmt::Display for ShardVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}||{}", self.major, self.epoch.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_validate() {
        assert!(Namespace::parse("db.coll.with.dots").is_ok());
        assert_eq!(Namespace::parse("db.a.b").unwrap().coll, "a.b");
        assert!(Namespace::parse("nodot").is_err());
        assert!(Namespace::parse("bad db.c").is_err());
        assert!(Namespace::parse("db.").is_err());
        assert!(ShardId::new("rs0").is_ok());
        assert!(ShardId::new("rs/0").is_err());
    }

    #[test]
    fn shard_versions_round_trip_through_their_wire_form() {
        let version = ShardVersion {
            epoch: Epoch(ObjectId::new()),
            major: 7,
        };
        let wire = Bson::Document(version.to_document());
        assert_eq!(ShardVersion::from_bson(&wire).unwrap(), version);
        let minor_ignored = Bson::Document(bson::doc! {
            "e": version.epoch.0, "v": bson::Timestamp { time: 7, increment: 3 },
        });
        assert_eq!(ShardVersion::from_bson(&minor_ignored).unwrap(), version);
        assert!(ShardVersion::from_bson(&Bson::Int32(1)).is_err());
        assert!(ShardVersion::from_bson(&Bson::Document(bson::doc! {"e": 1, "v": 1})).is_err());
        let no_epoch = bson::doc! {"v": bson::Timestamp { time: 1, increment: 0 }};
        assert!(ShardVersion::from_bson(&Bson::Document(no_epoch)).is_err());
    }
}
