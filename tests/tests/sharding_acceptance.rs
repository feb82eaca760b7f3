//! Issue 5 acceptance: a router whose chunk map is stale (it saw none of the migrations)
//! routes every read and write correctly; `removeShard` drains a shard that holds chunks and is
//! a database's primary, and afterwards every document is still reachable.

use std::{collections::HashSet, time::Duration};

use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::Collection;
use shoal_tests::{
    Node, TestCluster,
    mongo::client_for,
    sharding::{admin, list_shards, other_shard, primary_shard, shard_index},
};

const DOCS: i64 = 30_000;
/// How long draining may take.
const DRAIN_WAIT: Duration = Duration::from_secs(300);

async fn load(coll: &Collection<Document>, docs: i64) -> anyhow::Result<()> {
    let batch: Vec<Document> = (0..docs)
        .map(|k| doc! {"_id": k, "k": k, "n": 0, "pad": "p".repeat(100)})
        .collect();
    for part in batch.chunks(5_000) {
        coll.insert_many(part.to_vec()).await?;
    }
    Ok(())
}

async fn scan_ids(coll: &Collection<Document>) -> anyhow::Result<HashSet<i64>> {
    let mut cursor = coll.find(doc! {}).projection(doc! {"_id": 1}).await?;
    let mut ids = HashSet::new();
    while let Some(document) = cursor.try_next().await? {
        let id = document
            .get_i64("_id")
            .or(document.get_i32("_id").map(i64::from))?;
        anyhow::ensure!(ids.insert(id), "_id {id} returned twice");
    }
    Ok(ids)
}

/// Documents of `db.coll` owned by each shard, counted on the shards themselves.
async fn owned(cluster: &TestCluster, db: &str, coll: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for i in 0..cluster.shard_count() {
        let client = cluster.member_client(Node::Shard(i)).await?;
        total += client
            .database(db)
            .collection::<Document>(coll)
            .count_documents(doc! {})
            .await?;
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_router_that_saw_no_migration_routes_correctly() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let router = cluster.router_client().await?;
    admin(&router, doc! {"balancerStop": 1}).await?;
    admin(&router, doc! {"enableSharding": "stale"}).await?;
    admin(
        &router,
        doc! {"shardCollection": "stale.c", "key": {"k": 1}},
    )
    .await?;
    let coll: Collection<Document> = router.database("stale").collection("c");
    load(&coll, DOCS).await?;
    for at in [10_000, 20_000] {
        admin(&router, doc! {"split": "stale.c", "middle": {"k": at}}).await?;
    }
    let (_stale_process, port) = cluster
        .extra_router("stale-router", &["--routing-refresh-ms", "0"])
        .await?;
    let stale = client_for(&format!("mongodb://127.0.0.1:{port}/")).await?;
    let stale_coll: Collection<Document> = stale.database("stale").collection("c");
    // The stale router loads its chunk map now, and never refreshes it on its own.
    assert_eq!(stale_coll.count_documents(doc! {}).await?, DOCS as u64);

    let first = primary_shard(&router, "stale").await?;
    let second = other_shard(&router, &first).await?;
    let third = list_shards(&router)
        .await?
        .into_iter()
        .find(|s| *s != first && *s != second)
        .ok_or_else(|| anyhow::anyhow!("three shards expected"))?;
    for (k, to) in [(15_000, &second), (25_000, &third), (5_000, &second)] {
        admin(
            &router,
            doc! {"moveChunk": "stale.c", "find": {"k": k}, "to": to},
        )
        .await?;
    }
    admin(
        &router,
        doc! {"moveChunk": "stale.c", "find": {"k": 5_000}, "to": &third},
    )
    .await?;

    // Reads through the stale router: counts, a full scan, targeted finds.
    assert_eq!(stale_coll.count_documents(doc! {}).await?, DOCS as u64);
    let ids = scan_ids(&stale_coll).await?;
    assert_eq!(ids.len() as i64, DOCS);
    for k in [0, 9_999, 10_000, 15_000, 29_999] {
        let found = stale_coll.find_one(doc! {"k": k}).await?;
        assert!(found.is_some(), "k {k} not found through the stale router");
    }
    // Writes through the stale router: inserts, a multi-update, a targeted update, deletes.
    let new_docs: Vec<Document> = (0..30)
        .map(|i| doc! {"_id": DOCS + i, "k": i * 1_000 + 7, "n": 0})
        .collect();
    stale_coll.insert_many(new_docs).await?;
    let updated = stale_coll
        .update_many(
            doc! {"k": {"$gte": 5_000, "$lt": 25_000}},
            doc! {"$inc": {"n": 1}},
        )
        .await?;
    assert_eq!(updated.modified_count, 20_000 + 20, "{updated:?}");
    stale_coll
        .update_one(doc! {"k": 29_000}, doc! {"$set": {"mark": true}})
        .await?;
    let deleted = stale_coll.delete_many(doc! {"k": {"$lt": 100}}).await?;
    assert_eq!(deleted.deleted_count, 100 + 1);

    let expected = (DOCS + 30 - 101) as u64;
    assert_eq!(coll.count_documents(doc! {}).await?, expected);
    assert_eq!(owned(&cluster, "stale", "c").await?, expected);
    assert_eq!(coll.count_documents(doc! {"n": 1}).await?, 20_020);
    assert_eq!(coll.count_documents(doc! {"n": {"$gt": 1}}).await?, 0);
    assert_eq!(coll.count_documents(doc! {"mark": true}).await?, 1);
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_shard_drains_chunks_and_a_database_primary() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let router = cluster.router_client().await?;
    admin(&router, doc! {"enableSharding": "drain"}).await?;
    admin(
        &router,
        doc! {"shardCollection": "drain.c", "key": {"k": 1}},
    )
    .await?;
    let coll: Collection<Document> = router.database("drain").collection("c");
    load(&coll, DOCS).await?;
    let plain: Collection<Document> = router.database("drain").collection("plain");
    load(&plain, 1_000).await?;
    for at in [7_500, 15_000, 22_500] {
        // The balancer (running by default) may have split there already.
        let _ = admin(&router, doc! {"split": "drain.c", "middle": {"k": at}}).await;
    }
    let victim = primary_shard(&router, "drain").await?;
    let other = other_shard(&router, &victim).await?;
    admin(
        &router,
        doc! {"moveChunk": "drain.c", "find": {"k": 0}, "to": &other},
    )
    .await?;

    let started = admin(&router, doc! {"removeShard": &victim}).await?;
    println!("removeShard: {started}");
    assert_eq!(started.get_str("state")?, "started");
    admin(&router, doc! {"movePrimary": "drain", "to": &other}).await?;
    let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
    loop {
        let reply = admin(&router, doc! {"removeShard": &victim}).await?;
        if reply.get_str("state")? == "completed" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "still draining: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!list_shards(&router).await?.contains(&victim));
    assert_eq!(scan_ids(&coll).await?.len() as i64, DOCS);
    assert_eq!(coll.count_documents(doc! {}).await?, DOCS as u64);
    assert_eq!(scan_ids(&plain).await?.len(), 1_000);
    let survivor = shard_index(&other)?;
    let direct = cluster.member_client(Node::Shard(survivor)).await?;
    let on_survivor = direct
        .database("drain")
        .collection::<Document>("plain")
        .count_documents(doc! {})
        .await?;
    assert_eq!(on_survivor, 1_000);
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sharding_a_non_empty_collection_needs_an_index_on_the_key() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;
    let coll: Collection<Document> = router.database("filled").collection("c");
    load(&coll, 5_000).await?;
    admin(&router, doc! {"enableSharding": "filled"}).await?;
    let refused = admin(
        &router,
        doc! {"shardCollection": "filled.c", "key": {"k": 1}},
    )
    .await;
    let message = format!("{:?}", refused.err());
    assert!(message.contains("InvalidOptions"), "{message}");
    router
        .database("filled")
        .run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"k": 1}, "name": "k_1"}]})
        .await?;
    admin(
        &router,
        doc! {"shardCollection": "filled.c", "key": {"k": 1}},
    )
    .await?;
    let primary = primary_shard(&router, "filled").await?;
    let other = other_shard(&router, &primary).await?;
    admin(
        &router,
        doc! {"moveRange": "filled.c", "min": {"k": 2_500}, "toShard": &other},
    )
    .await?;
    assert_eq!(coll.count_documents(doc! {}).await?, 5_000);
    assert_eq!(scan_ids(&coll).await?.len(), 5_000);
    assert_eq!(owned(&cluster, "filled", "c").await?, 5_000);
    cluster.finish();
    Ok(())
}
