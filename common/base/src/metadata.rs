//! Reading the config server's metadata documents (`config.collections`, `config.chunks`) into
//! typed values. The config server and the router both read them; one parser means the two can
//! never disagree about what a document says.

use bson::Document;

use crate::{
    ChunkVersion, CollectionUuid, CommandError, Epoch, Namespace, ShardId,
    chunks::{Chunk, ShardKeyPattern},
};

fn broken(collection: &str, what: &str) -> CommandError {
    CommandError::internal(format!("config.{collection} document is malformed: {what}"))
}

/// The sharding identity of a collection, from its `config.collections` document.
#[derive(Clone, Debug)]
pub struct ShardedCollectionEntry {
    /// The namespace (`_id`).
    pub ns: Namespace,
    /// The collection UUID (`uuid`).
    pub uuid: CollectionUuid,
    /// The epoch (`lastmodEpoch`).
    pub epoch: Epoch,
    /// The shard key (`key`).
    pub key: ShardKeyPattern,
}

impl ShardedCollectionEntry {
    /// Parses a `config.collections` document.
    pub fn from_document(collection: &Document) -> Result<Self, CommandError> {
        let broken = |what: &str| broken("collections", what);
        let ns = Namespace::parse(collection.get_str("_id").map_err(|_| broken("_id"))?)?;
        let uuid = collection
            .get("uuid")
            .and_then(CollectionUuid::from_bson)
            .ok_or_else(|| broken("uuid"))?;
        let epoch = Epoch(
            collection
                .get_object_id("lastmodEpoch")
                .map_err(|_| broken("lastmodEpoch"))?,
        );
        let key =
            ShardKeyPattern::parse(collection.get_document("key").map_err(|_| broken("key"))?)?;
        Ok(ShardedCollectionEntry {
            ns,
            uuid,
            epoch,
            key,
        })
    }
}

/// Parses a `config.chunks` document of a collection whose epoch is `epoch`.
pub fn chunk_from_document(chunk: &Document, epoch: Epoch) -> Result<Chunk, CommandError> {
    let broken = |what: &str| broken("chunks", what);
    Ok(Chunk {
        min: chunk
            .get_document("min")
            .map_err(|_| broken("min"))?
            .clone(),
        max: chunk
            .get_document("max")
            .map_err(|_| broken("max"))?
            .clone(),
        shard: ShardId::new(chunk.get_str("shard").map_err(|_| broken("shard"))?)?,
        version: ChunkVersion::from_timestamp(
            epoch,
            chunk
                .get_timestamp("lastmod")
                .map_err(|_| broken("lastmod"))?,
        ),
    })
}
