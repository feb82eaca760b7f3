//! Sharding helpers over a router client: set up a ranged collection split in two with the upper
//! half on another shard, and read `config.*` back to check the chunk map tiles the key space.

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::Client;

use crate::mongo::is_ok;

/// The most chunks a test collection is expected to have (bounds the tiling walk).
const CHUNKS_MAX: usize = 10_000;

/// Where the two halves of a collection set up by [`shard_and_split`] live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitPlacement {
    /// The shard owning `[MinKey, middle)`: the database's primary shard.
    pub lower: String,
    /// The shard owning `[middle, MaxKey)`.
    pub upper: String,
}

/// Runs an admin command through `client` and fails unless it answers ok:1.
pub async fn admin(client: &Client, command: Document) -> anyhow::Result<Document> {
    let reply = client
        .database("admin")
        .run_command(command.clone())
        .await
        .map_err(|err| anyhow::anyhow!("{command} failed: {err}"))?;
    anyhow::ensure!(is_ok(&reply), "{command} answered {reply}");
    Ok(reply)
}

/// The primary shard of database `db`, from `config.databases`.
pub async fn primary_shard(client: &Client, db: &str) -> anyhow::Result<String> {
    let entry = client
        .database("config")
        .collection::<Document>("databases")
        .find_one(doc! { "_id": db })
        .await?
        .ok_or_else(|| anyhow::anyhow!("config.databases has no entry for {db}"))?;
    Ok(entry.get_str("primary")?.to_owned())
}

/// Shard names from `listShards`.
pub async fn list_shards(client: &Client) -> anyhow::Result<Vec<String>> {
    let reply = admin(client, doc! { "listShards": 1 }).await?;
    let mut names = Vec::new();
    for shard in reply.get_array("shards")? {
        let shard = shard
            .as_document()
            .ok_or_else(|| anyhow::anyhow!("shard entry {shard}"))?;
        names.push(shard.get_str("_id")?.to_owned());
    }
    Ok(names)
}

/// enableSharding on `db`, then [`shard_split_move`] on `db.coll`.
pub async fn shard_and_split(
    client: &Client,
    db: &str,
    coll: &str,
    key: &str,
    middle: Bson,
) -> anyhow::Result<SplitPlacement> {
    admin(client, doc! { "enableSharding": db }).await?;
    shard_split_move(client, db, coll, key, middle).await
}

/// shardCollection `db.coll` on `{key: 1}`, split at `{key: middle}` and move the (empty) upper
/// chunk to a shard other than the database's primary. Sharding must be enabled on `db`.
pub async fn shard_split_move(
    client: &Client,
    db: &str,
    coll: &str,
    key: &str,
    middle: Bson,
) -> anyhow::Result<SplitPlacement> {
    let ns = format!("{db}.{coll}");
    admin(client, doc! { "shardCollection": &ns, "key": { key: 1 } }).await?;
    admin(
        client,
        doc! { "split": &ns, "middle": { key: middle.clone() } },
    )
    .await?;
    let lower = primary_shard(client, db).await?;
    let upper = other_shard(client, &lower).await?;
    admin(
        client,
        doc! { "moveChunk": &ns, "find": { key: middle }, "to": &upper },
    )
    .await?;
    Ok(SplitPlacement { lower, upper })
}

/// Some shard other than `shard`.
pub async fn other_shard(client: &Client, shard: &str) -> anyhow::Result<String> {
    list_shards(client)
        .await?
        .into_iter()
        .find(|name| name != shard)
        .ok_or_else(|| anyhow::anyhow!("need a second shard besides {shard}"))
}

/// The shard index of a `shard{i}` name.
pub fn shard_index(name: &str) -> anyhow::Result<usize> {
    let digits = name
        .strip_prefix("shard")
        .ok_or_else(|| anyhow::anyhow!("shard name {name}"))?;
    Ok(digits.parse()?)
}

/// The chunk documents of collection `ns` from `config.chunks`, matched by the collection's
/// `uuid` from `config.collections` as MongoDB 5+ stores them.
pub async fn chunks_of(client: &Client, ns: &str) -> anyhow::Result<Vec<Document>> {
    let config = client.database("config");
    let entry = config
        .collection::<Document>("collections")
        .find_one(doc! { "_id": ns })
        .await?
        .ok_or_else(|| anyhow::anyhow!("config.collections has no entry for {ns}"))?;
    let uuid = entry
        .get("uuid")
        .ok_or_else(|| anyhow::anyhow!("{ns} has no uuid: {entry}"))?;
    let chunks: Vec<Document> = config
        .collection::<Document>("chunks")
        .find(doc! { "uuid": uuid.clone() })
        .await?
        .try_collect()
        .await?;
    Ok(chunks)
}

/// Checks that `chunks` tile the key space of the single-field shard key `key`: starting at
/// `{key: MinKey}`, each chunk's max is the next chunk's min, ending at `{key: MaxKey}`, with every
/// chunk used exactly once. Returns the chunks in key order.
pub fn check_tiling(chunks: &[Document], key: &str) -> anyhow::Result<Vec<Document>> {
    anyhow::ensure!(!chunks.is_empty(), "no chunks");
    anyhow::ensure!(
        chunks.len() <= CHUNKS_MAX,
        "{} chunks is more than expected",
        chunks.len()
    );
    let mut ordered = Vec::with_capacity(chunks.len());
    let mut lower = doc! { key: Bson::MinKey };
    for _ in 0..chunks.len() {
        let starting: Vec<&Document> = chunks
            .iter()
            .filter(|chunk| chunk.get_document("min").ok() == Some(&lower))
            .collect();
        anyhow::ensure!(
            starting.len() == 1,
            "{} chunks start at {lower}: {chunks:?}",
            starting.len()
        );
        let chunk = starting[0];
        lower = chunk.get_document("max")?.clone();
        ordered.push(chunk.clone());
    }
    anyhow::ensure!(
        lower == doc! { key: Bson::MaxKey },
        "chunks end at {lower}, not MaxKey"
    );
    Ok(ordered)
}
