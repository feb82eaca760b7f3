//! The router's routing cache: shards, databases and sharded collections with their chunk maps,
//! built from the config server's routing table. Pure: parsing and lookups only, no I/O.

use std::collections::HashMap;

use bson::{Bson, Document};
use shoal_common::{
    CollectionUuid, CommandError, Epoch, Namespace, ShardId, ShardVersion,
    chunks::ChunkMap,
    metadata::{ShardedCollectionEntry, chunk_from_document},
};

/// A shard as the router reaches it.
#[derive(Clone, Debug)]
pub struct ShardInfo {
    /// The shard's id.
    pub id: ShardId,
    /// Member addresses (`host:port`), from `config.shards.host`.
    pub hosts: Vec<String>,
    /// Where requests go: the replica-set connection string (`name/host,...`) the cluster's
    /// topology monitor resolves to the primary or a secondary.
    pub target: String,
}

/// A database's placement.
#[derive(Clone, Debug)]
pub struct DatabaseInfo {
    /// The shard holding its unsharded collections.
    pub primary: ShardId,
    /// Whether `movePrimary` is copying its unsharded collections to another shard (the
    /// config server's `shoalMovingPrimary` mark): writes to them wait until it is done.
    pub moving_primary: bool,
}

/// A sharded collection's routing information.
#[derive(Clone, Debug)]
pub struct CollectionRouting {
    /// Its UUID.
    pub uuid: CollectionUuid,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its chunks.
    pub map: ChunkMap,
}

/// One immutable snapshot of the routing metadata.
#[derive(Clone, Debug, Default)]
pub struct RoutingCache {
    /// The config server's routing-metadata version this snapshot reflects.
    pub version: i64,
    /// Shards by id.
    pub shards: HashMap<ShardId, ShardInfo>,
    /// Databases by name.
    pub databases: HashMap<String, DatabaseInfo>,
    /// Sharded collections by namespace.
    pub collections: HashMap<Namespace, CollectionRouting>,
}

fn broken(what: &str) -> CommandError {
    CommandError::internal(format!(
        "routing table from the config server is malformed: {what}"
    ))
}

fn documents<'a>(table: &'a Document, field: &str) -> impl Iterator<Item = &'a Document> {
    table
        .get_array(field)
        .into_iter()
        .flatten()
        .filter_map(Bson::as_document)
}

impl RoutingCache {
    /// Builds the cache from a `_shoalGetRoutingTable` reply.
    pub fn from_table(table: &Document) -> Result<RoutingCache, CommandError> {
        let version = table.get_i64("version").map_err(|_| broken("version"))?;
        let mut cache = RoutingCache {
            version,
            ..RoutingCache::default()
        };
        for shard in documents(table, "shards") {
            let id = ShardId::new(shard.get_str("_id").map_err(|_| broken("shard _id"))?)?;
            let host = shard.get_str("host").map_err(|_| broken("shard host"))?;
            let hosts = match host.split_once('/') {
                Some((_, hosts)) => hosts.split(',').map(str::to_owned).collect(),
                None => vec![host.to_owned()],
            };
            let target = host.to_owned();
            cache
                .shards
                .insert(id.clone(), ShardInfo { id, hosts, target });
        }
        for database in documents(table, "databases") {
            let name = database
                .get_str("_id")
                .map_err(|_| broken("database _id"))?;
            let primary =
                ShardId::new(database.get_str("primary").map_err(|_| broken("primary"))?)?;
            let moving_primary = database.contains_key("shoalMovingPrimary");
            cache.databases.insert(
                name.to_owned(),
                DatabaseInfo {
                    primary,
                    moving_primary,
                },
            );
        }
        let mut chunks_by_uuid: HashMap<CollectionUuid, Vec<&Document>> = HashMap::new();
        for chunk in documents(table, "chunks") {
            let uuid = chunk
                .get("uuid")
                .and_then(CollectionUuid::from_bson)
                .ok_or_else(|| broken("chunk uuid"))?;
            chunks_by_uuid.entry(uuid).or_default().push(chunk);
        }
        for collection in documents(table, "collections") {
            let ShardedCollectionEntry {
                ns,
                uuid,
                epoch,
                key,
            } = ShardedCollectionEntry::from_document(collection)?;
            let mut chunks = Vec::new();
            for chunk in chunks_by_uuid.get(&uuid).into_iter().flatten() {
                chunks.push(chunk_from_document(chunk, epoch)?);
            }
            let map = ChunkMap::new(key, chunks)?;
            cache
                .collections
                .insert(ns, CollectionRouting { uuid, epoch, map });
        }
        Ok(cache)
    }

    /// The sharding information of `ns`, if it is sharded.
    pub fn collection(&self, ns: &Namespace) -> Option<&CollectionRouting> {
        self.collections.get(ns)
    }

    /// Where to send a shard's requests: its replica-set connection string, which
    /// [`crate::cluster::Cluster::call`] resolves to a member.
    pub fn shard_host(&self, shard: &ShardId) -> Result<&str, CommandError> {
        self.shards
            .get(shard)
            .map(|info| info.target.as_str())
            .ok_or_else(|| {
                CommandError::new(
                    shoal_common::ErrorCode::SHARD_NOT_FOUND,
                    format!("shard {shard} not found"),
                )
            })
    }

    /// The version of `shard`'s part of `ns` in this snapshot, sent as `shardVersion` with
    /// every request routed by it; `None` when `ns` is not sharded (no version is sent).
    pub fn shard_version(&self, ns: &Namespace, shard: &ShardId) -> Option<ShardVersion> {
        self.collection(ns)
            .map(|collection| collection.map.shard_version(shard))
    }

    /// This snapshot with `ns`'s routing replaced by `fresh`'s: its database, its collection
    /// (removed when `fresh` has it unsharded) and the shard list. Used after a StaleConfig
    /// refusal. `version` stays this snapshot's, so the background refresh still fetches the
    /// other namespaces' changes.
    pub fn with_namespace_from(&self, fresh: &RoutingCache, ns: &Namespace) -> RoutingCache {
        let mut merged = self.clone();
        merged.shards = fresh.shards.clone();
        match fresh.databases.get(&ns.db) {
            Some(database) => merged.databases.insert(ns.db.clone(), database.clone()),
            None => merged.databases.remove(&ns.db),
        };
        match fresh.collections.get(ns) {
            Some(collection) => merged.collections.insert(ns.clone(), collection.clone()),
            None => merged.collections.remove(ns),
        };
        merged
    }

    /// Every shard id, sorted.
    pub fn shard_ids(&self) -> Vec<ShardId> {
        let mut ids: Vec<ShardId> = self.shards.keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use bson::{doc, oid::ObjectId};

    use super::*;

    #[test]
    fn builds_from_a_routing_table() {
        let uuid = CollectionUuid::random();
        let table = doc! {
            "version": 3_i64,
            "shards": [{"_id": "s0", "host": "s0/127.0.0.1:1"}, {"_id": "s1", "host": "s1/127.0.0.1:2"}],
            "databases": [
                {"_id": "db", "primary": "s0"},
                {"_id": "moving", "primary": "s0", "shoalMovingPrimary": {"to": "s1"}},
            ],
            "collections": [{"_id": "db.c", "uuid": uuid.to_bson(), "lastmodEpoch": ObjectId::new(), "key": {"k": 1}}],
            "chunks": [
                {"uuid": uuid.to_bson(), "min": {"k": Bson::MinKey}, "max": {"k": 5}, "shard": "s0", "lastmod": bson::Timestamp{time: 1, increment: 1}},
                {"uuid": uuid.to_bson(), "min": {"k": 5}, "max": {"k": Bson::MaxKey}, "shard": "s1", "lastmod": bson::Timestamp{time: 2, increment: 0}},
            ],
        };
        let cache = RoutingCache::from_table(&table).unwrap();
        let ns = Namespace::parse("db.c").unwrap();
        let routing = cache.collection(&ns).unwrap();
        assert_eq!(
            routing.map.chunk_for_key(&doc! {"k": 7}).shard.as_str(),
            "s1"
        );
        assert_eq!(
            cache.shard_host(&ShardId::new("s1").unwrap()).unwrap(),
            "s1/127.0.0.1:2"
        );
        assert_eq!(cache.databases["db"].primary.as_str(), "s0");
        assert!(!cache.databases["db"].moving_primary);
        assert!(cache.databases["moving"].moving_primary);
    }

    #[test]
    fn refuses_a_table_with_a_gap() {
        let uuid = CollectionUuid::random();
        let table = doc! {
            "version": 1_i64, "shards": [], "databases": [],
            "collections": [{"_id": "db.c", "uuid": uuid.to_bson(), "lastmodEpoch": ObjectId::new(), "key": {"k": 1}}],
            "chunks": [{"uuid": uuid.to_bson(), "min": {"k": Bson::MinKey}, "max": {"k": 5}, "shard": "s0", "lastmod": bson::Timestamp{time: 1, increment: 0}}],
        };
        assert!(RoutingCache::from_table(&table).is_err());
    }

    fn table(version: i64, uuid: CollectionUuid, epoch: ObjectId, owner: &str) -> Document {
        doc! {
            "version": version,
            "shards": [{"_id": "s0", "host": "s0/127.0.0.1:1"}, {"_id": "s1", "host": "s1/127.0.0.1:2"}],
            "databases": [{"_id": "db", "primary": "s0"}],
            "collections": [{"_id": "db.c", "uuid": uuid.to_bson(), "lastmodEpoch": epoch, "key": {"k": 1}}],
            "chunks": [
                {"uuid": uuid.to_bson(), "min": {"k": Bson::MinKey}, "max": {"k": 5}, "shard": "s0", "lastmod": bson::Timestamp{time: 2, increment: 1}},
                {"uuid": uuid.to_bson(), "min": {"k": 5}, "max": {"k": Bson::MaxKey}, "shard": owner, "lastmod": bson::Timestamp{time: 2, increment: 0}},
            ],
        }
    }

    #[test]
    fn shard_versions_come_from_the_snapshot() {
        let (uuid, epoch) = (CollectionUuid::random(), ObjectId::new());
        let cache = RoutingCache::from_table(&table(1, uuid, epoch, "s1")).unwrap();
        let ns = Namespace::parse("db.c").unwrap();
        let s1 = ShardId::new("s1").unwrap();
        let version = cache.shard_version(&ns, &s1).unwrap();
        assert_eq!(version.major, 2);
        assert_eq!(version.epoch, Epoch(epoch));
        let unsharded = Namespace::parse("db.other").unwrap();
        assert!(cache.shard_version(&unsharded, &s1).is_none());
    }

    #[test]
    fn one_namespace_is_merged_and_the_version_kept() {
        let (uuid, epoch) = (CollectionUuid::random(), ObjectId::new());
        let cache = RoutingCache::from_table(&table(4, uuid, epoch, "s1")).unwrap();
        let fresh = RoutingCache::from_table(&table(9, uuid, epoch, "s0")).unwrap();
        let ns = Namespace::parse("db.c").unwrap();
        let merged = cache.with_namespace_from(&fresh, &ns);
        assert_eq!(merged.version, 4);
        let owner = merged
            .collection(&ns)
            .unwrap()
            .map
            .chunk_for_key(&doc! {"k": 7});
        assert_eq!(owner.shard.as_str(), "s0");
        let dropped = RoutingCache {
            collections: HashMap::new(),
            ..fresh
        };
        let merged = cache.with_namespace_from(&dropped, &ns);
        assert!(merged.collection(&ns).is_none());
        assert_eq!(merged.databases["db"].primary.as_str(), "s0");
    }
}
