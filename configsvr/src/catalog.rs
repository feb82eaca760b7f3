//! Pure metadata decisions and the document shapes of `config.*`, kept apart from I/O so they
//! can be tested directly. Shapes follow MongoDB 5.0+ (`config.chunks` keyed by collection
//! `uuid`, `lastmod` as a Timestamp), which is what mongosh's `sh.status()` expects.

use std::collections::BTreeMap;

use bson::{Bson, Document, doc, oid::ObjectId};
use shoal_common::{
    CollectionUuid, CommandError, Epoch, Namespace, ShardId,
    chunks::{Chunk, ChunkMap, ShardKeyPattern},
    metadata::{ShardedCollectionEntry, chunk_from_document},
};

/// Collection names inside the `config` database.
pub mod coll {
    /// `config.shards`.
    pub const SHARDS: &str = "shards";
    /// `config.databases`.
    pub const DATABASES: &str = "databases";
    /// `config.collections`.
    pub const COLLECTIONS: &str = "collections";
    /// `config.chunks`.
    pub const CHUNKS: &str = "chunks";
    /// `config.version`.
    pub const VERSION: &str = "version";
    /// `config.settings`.
    pub const SETTINGS: &str = "settings";
    /// `config.tags`: zone ranges.
    pub const TAGS: &str = "tags";
    /// Shoal's own bookkeeping: the routing-metadata version routers poll.
    pub const SHOAL_METADATA: &str = "shoalMetadata";
}

/// A parsed `addShard` argument: `rsName/host:port[,host:port...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardConnection {
    /// The replica-set name before the slash.
    pub replset: String,
    /// The member addresses after it.
    pub hosts: Vec<String>,
}

impl ShardConnection {
    /// Parses `rs/host:port,...`. A bare `host:port` (no set name) is refused: every shard is a
    /// replica set.
    pub fn parse(text: &str) -> Result<ShardConnection, CommandError> {
        let Some((replset, hosts)) = text.split_once('/') else {
            return Err(CommandError::bad_value(format!(
                "invalid shard connection string '{text}': expected <replSetName>/<host:port>[,...]"
            )));
        };
        ShardId::new(replset)?;
        let hosts: Vec<String> = hosts.split(',').map(|h| h.trim().to_owned()).collect();
        for host in &hosts {
            let valid = match host.rsplit_once(':') {
                Some((name, port)) => !name.is_empty() && port.parse::<u16>().is_ok(),
                None => false,
            };
            if !valid {
                return Err(CommandError::bad_value(format!(
                    "invalid host '{host}' in shard connection string '{text}'"
                )));
            }
        }
        Ok(ShardConnection {
            replset: replset.to_owned(),
            hosts,
        })
    }

    /// The connection string as stored in `config.shards.host`.
    pub fn to_host_string(&self) -> String {
        format!("{}/{}", self.replset, self.hosts.join(","))
    }
}

/// Picks the primary shard for a new database: the shard that is primary for the fewest
/// databases, ties broken by name so the choice is deterministic.
pub fn choose_primary_shard(shards: &[ShardId], database_primaries: &[ShardId]) -> Option<ShardId> {
    let mut load: BTreeMap<&ShardId, usize> = shards.iter().map(|s| (s, 0)).collect();
    for primary in database_primaries {
        if let Some(count) = load.get_mut(primary) {
            *count += 1;
        }
    }
    load.into_iter()
        .min_by_key(|(shard, count)| (*count, (*shard).clone()))
        .map(|(s, _)| s.clone())
}

/// A `config.shards` document.
pub fn shard_document(id: &ShardId, connection: &ShardConnection) -> Document {
    doc! {
        "_id": id.as_str(),
        "host": connection.to_host_string(),
        "state": 1,
        "topologyTime": bson::Timestamp { time: now_secs(), increment: 1 },
    }
}

/// A `config.databases` document.
pub fn database_document(db: &str, primary: &ShardId) -> Document {
    doc! {
        "_id": db,
        "primary": primary.as_str(),
        "partitioned": true,
        "version": {
            "uuid": CollectionUuid::random().to_bson(),
            "timestamp": bson::Timestamp { time: now_secs(), increment: 1 },
            "lastMod": 1,
        },
    }
}

/// A `config.collections` document for a freshly sharded collection.
pub fn collection_document(
    ns: &Namespace,
    uuid: CollectionUuid,
    epoch: Epoch,
    key: &ShardKeyPattern,
    unique: bool,
) -> Document {
    doc! {
        "_id": ns.to_string(),
        "lastmodEpoch": epoch.0,
        "lastmod": bson::DateTime::now(),
        "timestamp": bson::Timestamp { time: now_secs(), increment: 1 },
        "uuid": uuid.to_bson(),
        "key": key.to_document(),
        "unique": unique,
    }
}

/// A `config.chunks` document. `_id` is kept stable across splits for the lower half.
pub fn chunk_document(id: &Bson, ns: &Namespace, uuid: CollectionUuid, chunk: &Chunk) -> Document {
    doc! {
        "_id": id.clone(),
        "uuid": uuid.to_bson(),
        "ns": ns.to_string(),
        "min": chunk.min.clone(),
        "max": chunk.max.clone(),
        "shard": chunk.shard.as_str(),
        "lastmod": chunk.version.to_timestamp(),
        "history": [{ "validAfter": bson::Timestamp { time: now_secs(), increment: 1 }, "shard": chunk.shard.as_str() }],
    }
}

/// A collection's sharding metadata read back from `config.collections` and `config.chunks`.
#[derive(Clone, Debug)]
pub struct ShardedCollection {
    /// The namespace.
    pub ns: Namespace,
    /// Its UUID.
    pub uuid: CollectionUuid,
    /// Its epoch.
    pub epoch: Epoch,
    /// The chunk map.
    pub map: ChunkMap,
    /// The `_id` of each chunk document, parallel to `map.chunks`.
    pub chunk_ids: Vec<Bson>,
}

impl ShardedCollection {
    /// Rebuilds the metadata from a `config.collections` document and its chunk documents.
    pub fn from_documents(
        collection: &Document,
        chunk_documents: &[Document],
    ) -> Result<ShardedCollection, CommandError> {
        let ShardedCollectionEntry {
            ns,
            uuid,
            epoch,
            key,
        } = ShardedCollectionEntry::from_document(collection)?;
        let mut pairs = Vec::with_capacity(chunk_documents.len());
        for chunk_doc in chunk_documents {
            pairs.push((
                chunk_doc.get("_id").cloned().unwrap_or(Bson::Null),
                chunk_from_document(chunk_doc, epoch)?,
            ));
        }
        pairs.sort_by(|a, b| shoal_common::chunks::compare_bounds(&a.1.min, &b.1.min));
        let chunk_ids = pairs.iter().map(|(id, _)| id.clone()).collect();
        let map = ChunkMap::new(key, pairs.into_iter().map(|(_, chunk)| chunk).collect())?;
        Ok(ShardedCollection {
            ns,
            uuid,
            epoch,
            map,
            chunk_ids,
        })
    }
}

/// A fresh chunk `_id`.
pub fn new_chunk_id() -> Bson {
    Bson::ObjectId(ObjectId::new())
}

fn now_secs() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shard_connection_strings() {
        let parsed = ShardConnection::parse("rs0/127.0.0.1:27018,127.0.0.2:27018").unwrap();
        assert_eq!(parsed.replset, "rs0");
        assert_eq!(parsed.hosts.len(), 2);
        assert_eq!(
            parsed.to_host_string(),
            "rs0/127.0.0.1:27018,127.0.0.2:27018"
        );
        assert!(ShardConnection::parse("127.0.0.1:27018").is_err());
        assert!(ShardConnection::parse("rs0/127.0.0.1").is_err());
        assert!(ShardConnection::parse("rs0/:5").is_err());
        assert!(ShardConnection::parse("/h:1").is_err());
    }

    #[test]
    fn primary_goes_to_the_least_loaded_shard() {
        let a = ShardId::new("a").unwrap();
        let b = ShardId::new("b").unwrap();
        assert_eq!(
            choose_primary_shard(&[a.clone(), b.clone()], &[]),
            Some(a.clone())
        );
        assert_eq!(
            choose_primary_shard(&[a.clone(), b.clone()], std::slice::from_ref(&a)),
            Some(b.clone())
        );
        assert_eq!(choose_primary_shard(&[], &[]), None);
    }

    #[test]
    fn chunk_documents_round_trip() {
        let ns = Namespace::parse("db.c").unwrap();
        let key = ShardKeyPattern::parse(&doc! {"k": 1}).unwrap();
        let epoch = Epoch(ObjectId::new());
        let uuid = CollectionUuid::random();
        let chunk = Chunk {
            min: key.global_min(),
            max: key.global_max(),
            shard: ShardId::new("a").unwrap(),
            version: shoal_common::ChunkVersion::initial(epoch),
        };
        let coll_doc = collection_document(&ns, uuid, epoch, &key, false);
        let chunk_doc = chunk_document(&new_chunk_id(), &ns, uuid, &chunk);
        let back = ShardedCollection::from_documents(&coll_doc, &[chunk_doc]).unwrap();
        assert_eq!(back.map.chunks, vec![chunk]);
        assert_eq!(back.uuid, uuid);
    }
}
