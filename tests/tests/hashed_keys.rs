//! Hashed shard keys: an empty collection sharded on `{k: "hashed"}` starts with chunks spread
//! over every shard (two per shard by default, or `numInitialChunks`), so inserts spread from
//! the first document; a non-empty collection starts with one chunk on its primary shard, as in
//! MongoDB. Every document stays reachable through the router. Also `split` by `find` and
//! `bounds`, which cut a chunk at the median shard key of its documents.

use bson::{Document, doc};
use shoal_tests::{Node, TestCluster};

async fn chunks_per_shard(cluster: &TestCluster, ns: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let client = cluster.router_client().await?;
    let config = client.database("config");
    let collection = config
        .collection::<Document>("collections")
        .find_one(doc! {"_id": ns})
        .await?
        .ok_or_else(|| anyhow::anyhow!("{ns} is not sharded"))?;
    let uuid = collection.get("uuid").cloned().unwrap_or(bson::Bson::Null);
    let chunks = config.collection::<Document>("chunks");
    let mut counts = Vec::new();
    for shard in ["shard0", "shard1"] {
        let n = chunks
            .count_documents(doc! {"uuid": uuid.clone(), "shard": shard})
            .await?;
        counts.push((shard.to_owned(), n));
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_hashed_collections_start_spread_over_every_shard() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    let admin = client.database("admin");
    admin.run_command(doc! {"enableSharding": "h"}).await?;
    admin
        .run_command(doc! {"shardCollection": "h.c", "key": {"k": "hashed"}})
        .await?;
    assert_eq!(
        chunks_per_shard(&cluster, "h.c").await?,
        [("shard0".to_owned(), 2), ("shard1".to_owned(), 2)]
    );
    let coll = client.database("h").collection::<Document>("c");
    let docs: Vec<Document> = (0..2000).map(|k| doc! {"k": k, "v": k * 2}).collect();
    coll.insert_many(docs).await?;
    assert_eq!(coll.count_documents(doc! {}).await?, 2000);
    // Each shard holds a fair part (a 64-bit hash of 2000 keys: far from 0 or 2000).
    let mut total = 0;
    for i in 0..2 {
        let direct = cluster.member_client(Node::Shard(i)).await?;
        let n = direct
            .database("h")
            .collection::<Document>("c")
            .count_documents(doc! {})
            .await?;
        assert!(
            (600..=1400).contains(&n),
            "shard{i} holds {n} of 2000 documents"
        );
        total += n;
    }
    assert_eq!(total, 2000);
    // Equality on the hashed key finds the document; updates by key work.
    let found = coll
        .find_one(doc! {"k": 1234})
        .await?
        .ok_or_else(|| anyhow::anyhow!("k 1234 missing"))?;
    assert_eq!(found.get_i32("v")?, 2468);
    coll.update_one(doc! {"k": 1234}, doc! {"$set": {"v": -1}})
        .await?;
    assert_eq!(coll.count_documents(doc! {"v": -1}).await?, 1);

    // numInitialChunks, and its bounds.
    admin
        .run_command(doc! {"shardCollection": "h.d", "key": {"k": "hashed"}, "numInitialChunks": 6})
        .await?;
    assert_eq!(
        chunks_per_shard(&cluster, "h.d").await?,
        [("shard0".to_owned(), 3), ("shard1".to_owned(), 3)]
    );
    let too_many = admin
        .run_command(
            doc! {"shardCollection": "h.e", "key": {"k": "hashed"}, "numInitialChunks": 100_000},
        )
        .await;
    assert!(too_many.is_err());

    // A non-empty collection starts with one chunk on its primary shard.
    let full = client.database("h").collection::<Document>("full");
    full.insert_many((0..50).map(|k| doc! {"k": k})).await?;
    admin
        .run_command(doc! {"shardCollection": "h.full", "key": {"k": "hashed"}})
        .await?;
    let counts = chunks_per_shard(&cluster, "h.full").await?;
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 1, "{counts:?}");
    assert_eq!(full.count_documents(doc! {}).await?, 50);
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_by_find_or_bounds_cuts_at_the_median() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    let admin = client.database("admin");
    admin.run_command(doc! {"enableSharding": "m"}).await?;
    admin
        .run_command(doc! {"shardCollection": "m.r", "key": {"k": 1}})
        .await?;
    let ranged = client.database("m").collection::<Document>("r");
    ranged.insert_many((0..1000).map(|k| doc! {"k": k})).await?;
    admin
        .run_command(doc! {"split": "m.r", "find": {"k": 10}})
        .await?;
    admin
        .run_command(doc! {"split": "m.r", "bounds": [{"k": 500}, {"k": bson::Bson::MaxKey}]})
        .await?;
    let chunks = shoal_tests::sharding::chunks_of(&client, "m.r").await?;
    let mins: Vec<String> = chunks
        .iter()
        .map(|c| {
            c.get_document("min")
                .map(|m| m.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        mins,
        ["{ \"k\": MinKey }", "{ \"k\": 500 }", "{ \"k\": 750 }"],
        "{chunks:?}"
    );
    // Bounds that are not a chunk's are refused.
    let wrong = admin
        .run_command(doc! {"split": "m.r", "bounds": [{"k": 500}, {"k": 600}]})
        .await;
    assert!(wrong.is_err());
    assert_eq!(ranged.count_documents(doc! {}).await?, 1000);

    // A hashed key splits at the median of the hashes.
    admin
        .run_command(doc! {"shardCollection": "m.h", "key": {"k": "hashed"}, "numInitialChunks": 1})
        .await?;
    let hashed = client.database("m").collection::<Document>("h");
    hashed.insert_many((0..1000).map(|k| doc! {"k": k})).await?;
    admin
        .run_command(doc! {"split": "m.h", "find": {"k": 3}})
        .await?;
    assert_eq!(
        shoal_tests::sharding::chunks_of(&client, "m.h")
            .await?
            .len(),
        2
    );
    assert_eq!(hashed.count_documents(doc! {}).await?, 1000);

    // A chunk whose documents all have its lower bound as key cannot be split. (The first
    // split puts every document in [7, MaxKey).)
    admin
        .run_command(doc! {"shardCollection": "m.one", "key": {"k": 1}})
        .await?;
    let one = client.database("m").collection::<Document>("one");
    one.insert_many((0..10).map(|_| doc! {"k": 7})).await?;
    admin
        .run_command(doc! {"split": "m.one", "find": {"k": 7}})
        .await?;
    let stuck = admin
        .run_command(doc! {"split": "m.one", "find": {"k": 7}})
        .await;
    assert_eq!(
        stuck
            .as_ref()
            .err()
            .and_then(shoal_tests::mongo::error_code),
        Some(20),
        "{stuck:?}"
    );
    cluster.finish();
    Ok(())
}
