//! Measuring chunks: the bytes and documents of every chunk of a collection, asked of the
//! shards that own them with `_shoalRangeSizes` (one scan per shard and collection). The
//! auto-splitter and the balancer both decide from these numbers, so they share one reader.

use std::{collections::BTreeMap, sync::Arc};

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ShardId};
use shoal_member::MemberCore;

use crate::{
    catalog::ShardedCollection,
    server::{ConfigServer, shard_call},
};

/// The size of one chunk as its shard measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChunkSize {
    /// Bytes of its documents (BSON sizes).
    pub bytes: u64,
    /// Number of documents.
    pub docs: u64,
}

impl ConfigServer {
    /// The size of every chunk of `collection`, parallel to `collection.map.chunks`.
    pub(crate) async fn chunk_sizes(
        &self,
        core: &Arc<MemberCore>,
        collection: &ShardedCollection,
    ) -> Result<Vec<ChunkSize>, CommandError> {
        let mut by_shard: BTreeMap<&ShardId, Vec<usize>> = BTreeMap::new();
        for (index, chunk) in collection.map.chunks.iter().enumerate() {
            by_shard.entry(&chunk.shard).or_default().push(index);
        }
        let mut sizes = vec![ChunkSize::default(); collection.map.chunks.len()];
        for (shard, indexes) in by_shard {
            let ranges: Vec<Bson> = indexes
                .iter()
                .map(|&index| {
                    let chunk = &collection.map.chunks[index];
                    Bson::Array(vec![chunk.min.clone().into(), chunk.max.clone().into()])
                })
                .collect();
            let host = self.shard_host(core, shard).await?;
            let request = doc! {
                "_shoalRangeSizes": collection.ns.to_string(), "$db": "admin",
                "keyPattern": collection.map.key.to_document(),
                "ranges": ranges,
            };
            let reply = shard_call(core, &host, request).await?;
            let measured = parse_sizes(&reply, indexes.len())?;
            for (index, size) in indexes.into_iter().zip(measured) {
                sizes[index] = size;
            }
        }
        Ok(sizes)
    }
}

/// Reads a `_shoalRangeSizes` reply that must hold `expected` sizes.
fn parse_sizes(reply: &Document, expected: usize) -> Result<Vec<ChunkSize>, CommandError> {
    if let Some(error) = CommandError::from_reply(reply) {
        return Err(error);
    }
    let sizes = reply
        .get_array("sizes")
        .map_err(|_| CommandError::internal("_shoalRangeSizes reply without sizes"))?;
    if sizes.len() != expected {
        return Err(CommandError::internal(format!(
            "_shoalRangeSizes measured {} ranges of {expected}",
            sizes.len()
        )));
    }
    let field = |size: &Bson, name: &str| {
        size.as_document()
            .and_then(|s| s.get(name))
            .and_then(number)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    };
    Ok(sizes
        .iter()
        .map(|size| ChunkSize {
            bytes: field(size, "bytes"),
            docs: field(size, "count"),
        })
        .collect())
}

/// A BSON number as an integer (doubles truncated), `None` for anything else.
pub(crate) fn number(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) if v.is_finite() => Some(*v as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_in_order_and_checked() {
        let reply = doc! {"sizes": [{"bytes": 10_i64, "count": 2_i64}, {"bytes": 0, "count": 0}], "ok": 1.0};
        let sizes = parse_sizes(&reply, 2).unwrap();
        assert_eq!(sizes[0], ChunkSize { bytes: 10, docs: 2 });
        assert_eq!(sizes[1], ChunkSize::default());
        assert!(parse_sizes(&reply, 3).is_err());
        assert!(parse_sizes(&doc! {"ok": 1.0}, 0).is_err());
        let failed = doc! {"ok": 0.0, "errmsg": "no", "code": 8};
        assert!(parse_sizes(&failed, 0).is_err());
    }

    #[test]
    fn numbers_of_every_width() {
        assert_eq!(number(&Bson::Int32(3)), Some(3));
        assert_eq!(number(&Bson::Int64(-4)), Some(-4));
        assert_eq!(number(&Bson::Double(2.9)), Some(2));
        assert_eq!(number(&Bson::Double(f64::NAN)), None);
        assert_eq!(number(&Bson::String("1".into())), None);
    }
}
