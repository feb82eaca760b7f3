//! Automatic splits: with the cluster's maximum chunk size lowered to 1 MB (MongoDB's
//! `config.settings {_id: "chunksize"}`), a chunk that grows to several MB is split by the
//! config server's auto-splitter at median keys until every chunk is under the maximum; a
//! per-collection size (`configureCollectionBalancing`) overrides it. No document is lost or
//! duplicated and the chunks still tile the key space.

use std::time::{Duration, Instant};

use bson::{Document, doc};
use shoal_tests::{
    TestCluster,
    sharding::{check_tiling, chunks_of},
};

/// How long the auto-splitter may take (it runs every 2 s and makes up to 64 splits a round).
const SPLIT_WAIT: Duration = Duration::from_secs(60);

async fn wait_chunks(client: &mongodb::Client, ns: &str, at_least: usize) -> anyhow::Result<usize> {
    let started = Instant::now();
    loop {
        let chunks = chunks_of(client, ns).await?;
        if chunks.len() >= at_least {
            check_tiling(&chunks, "k")?;
            return Ok(chunks.len());
        }
        anyhow::ensure!(
            started.elapsed() < SPLIT_WAIT,
            "{ns} has {} chunks after {SPLIT_WAIT:?}",
            chunks.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_over_the_maximum_size_split_by_themselves() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    let admin = client.database("admin");
    // This test is about the auto-splitter alone: the balancer would split for balance too.
    admin.run_command(doc! {"balancerStop": 1}).await?;
    client
        .database("config")
        .collection::<Document>("settings")
        .update_one(doc! {"_id": "chunksize"}, doc! {"$set": {"value": 1}})
        .upsert(true)
        .await?;
    admin.run_command(doc! {"enableSharding": "grow"}).await?;
    admin
        .run_command(doc! {"shardCollection": "grow.c", "key": {"k": 1}})
        .await?;
    let coll = client.database("grow").collection::<Document>("c");
    let pad = "p".repeat(1000);
    // About 4 MB.
    for batch in 0..4 {
        let docs: Vec<Document> = (0..1000)
            .map(|i| doc! {"k": batch * 1000 + i, "pad": pad.clone()})
            .collect();
        coll.insert_many(docs).await?;
    }
    let chunks = wait_chunks(&client, "grow.c", 4).await?;
    eprintln!("4 MB at a 1 MB maximum: {chunks} chunks");
    assert_eq!(coll.count_documents(doc! {}).await?, 4000);
    let distinct = coll.distinct("k", doc! {}).await?;
    assert_eq!(distinct.len(), 4000);

    // A per-collection maximum above the data's size leaves a collection in one chunk.
    admin
        .run_command(doc! {"shardCollection": "grow.big", "key": {"k": 1}})
        .await?;
    admin
        .run_command(doc! {"configureCollectionBalancing": "grow.big", "chunkSize": 64})
        .await?;
    let big = client.database("grow").collection::<Document>("big");
    let docs: Vec<Document> = (0..3000)
        .map(|k| doc! {"k": k, "pad": pad.clone()})
        .collect();
    big.insert_many(docs).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(chunks_of(&client, "grow.big").await?.len(), 1);
    let bad = admin
        .run_command(doc! {"configureCollectionBalancing": "grow.big", "chunkSize": -3})
        .await;
    assert!(bad.is_err());
    cluster.finish();
    Ok(())
}
