//! A node restarting behind a running router must be invisible to clients once it is back: like
//! mongos, which retries config-server and shard commands on network errors over a fresh
//! connection, the first command after the restart succeeds, and promptly.

use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use mongodb::Collection;
use shoal_tests::{
    Node, TestCluster,
    sharding::{admin, list_shards, shard_and_split, shard_index},
};

/// How long the first command after a restart may take (the node already answers `ping`).
const FIRST_COMMAND_BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn router_survives_config_server_restart() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;
    admin(&router, doc! { "enableSharding": "before" }).await?;

    cluster.kill(Node::Config);
    cluster.restart(Node::Config).await?;
    let started = Instant::now();
    let shards = list_shards(&router).await?;
    assert_eq!(shards.len(), 2, "{shards:?}");
    admin(&router, doc! { "enableSharding": "after" }).await?;
    let took = started.elapsed();
    assert!(
        took < FIRST_COMMAND_BOUND,
        "first metadata commands after a config restart took {took:?}"
    );

    drop(router);
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn router_survives_shard_restart() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;
    let placement = shard_and_split(&router, "rs", "c", "k", Bson::Int32(50)).await?;
    let coll: Collection<Document> = router.database("rs").collection("c");
    coll.insert_many((0..100).map(|k| doc! { "k": k }).collect::<Vec<_>>())
        .await?;

    let upper = Node::Shard(shard_index(&placement.upper)?);
    cluster.kill(upper);
    cluster.restart(upper).await?;
    let started = Instant::now();
    assert_eq!(coll.count_documents(doc! {}).await?, 100);
    coll.insert_one(doc! { "k": 99_999 }).await?;
    assert_eq!(
        coll.count_documents(doc! { "k": { "$gte": 50 } }).await?,
        51
    );
    let took = started.elapsed();
    assert!(
        took < FIRST_COMMAND_BOUND,
        "first commands after a shard restart took {took:?}"
    );

    drop(router);
    cluster.finish();
    Ok(())
}
