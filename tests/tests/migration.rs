//! Chunk migration with data: `moveChunk` and `moveRange` move documents between shards while
//! clients write, each document ends on exactly one shard (checked on the shards themselves,
//! which hide orphans, and on their raw `dbHash`-level counts after range deletion), and routers
//! keep routing correctly.

use std::{sync::Arc, time::Duration};

use bson::{Document, doc};
use futures::TryStreamExt;
use mongodb::Client;
use shoal_tests::{
    Node, TestCluster,
    sharding::{admin, chunks_of, other_shard, primary_shard, shard_index},
};
use tokio::sync::Mutex;

const DB: &str = "mig";
const COLL: &str = "c";
const NS: &str = "mig.c";
const DOCS: i64 = 20_000;
/// How long the range deleter may take to remove the donor's copy.
const DELETION_WAIT: Duration = Duration::from_secs(60);

async fn count_on(cluster: &TestCluster, shard: usize, filter: Document) -> anyhow::Result<u64> {
    let client = cluster.member_client(Node::Shard(shard)).await?;
    Ok(client
        .database(DB)
        .collection::<Document>(COLL)
        .count_documents(filter)
        .await?)
}

/// Documents stored on a shard whatever it owns (`collStats.count` counts orphans too).
async fn stored_on(cluster: &TestCluster, shard: usize) -> anyhow::Result<i64> {
    let client = cluster.member_client(Node::Shard(shard)).await?;
    let stats = client
        .database(DB)
        .run_command(doc! {"collStats": COLL})
        .await?;
    Ok(match stats.get("count") {
        Some(bson::Bson::Int32(n)) => i64::from(*n),
        Some(bson::Bson::Int64(n)) => *n,
        _ => 0,
    })
}

async fn insert_all(router: &Client) -> anyhow::Result<()> {
    let coll = router.database(DB).collection::<Document>(COLL);
    let docs: Vec<Document> = (0..DOCS)
        .map(|k| doc! {"_id": k, "k": k, "pad": "x".repeat(200)})
        .collect();
    for batch in docs.chunks(5_000) {
        coll.insert_many(batch.to_vec()).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_with_data_moves_while_clients_write() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;
    // Placement is this test's to decide.
    admin(&router, doc! {"balancerStop": 1}).await?;
    admin(&router, doc! {"enableSharding": DB}).await?;
    admin(&router, doc! {"shardCollection": NS, "key": {"k": 1}}).await?;
    insert_all(&router).await?;
    admin(&router, doc! {"split": NS, "middle": {"k": DOCS / 2}}).await?;
    let donor = primary_shard(&router, DB).await?;
    let recipient = other_shard(&router, &donor).await?;

    // A writer inserting and updating in the moving range throughout.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let router = router.clone();
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let coll = router.database(DB).collection::<Document>(COLL);
            for i in 0..400_i64 {
                let k = DOCS + i;
                coll.insert_one(doc! {"_id": k, "k": DOCS / 2 + (i * 7) % (DOCS / 2), "new": true})
                    .await?;
                acked.lock().await.push(k);
                coll.update_one(doc! {"k": DOCS / 2 + i}, doc! {"$inc": {"n": 1}})
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let reply = admin(
        &router,
        doc! {"moveChunk": NS, "find": {"k": DOCS / 2}, "to": &recipient},
    )
    .await?;
    println!("moveChunk: {reply}");
    writer.await??;
    let acked = acked.lock().await.clone();

    let chunks = chunks_of(&router, NS).await?;
    let upper = chunks
        .iter()
        .find(|c| c.get_document("min").ok() == Some(&doc! {"k": DOCS / 2}))
        .ok_or_else(|| anyhow::anyhow!("no upper chunk"))?;
    assert_eq!(upper.get_str("shard")?, recipient);

    let coll = router.database(DB).collection::<Document>(COLL);
    let total = DOCS as u64 + acked.len() as u64;
    assert_eq!(coll.count_documents(doc! {}).await?, total);
    let ids: Vec<Document> = coll.find(doc! {}).await?.try_collect().await?;
    assert_eq!(
        ids.len() as u64,
        total,
        "a full scan misses or repeats documents"
    );
    let updated = coll.count_documents(doc! {"n": 1}).await?;
    assert_eq!(
        updated, 400,
        "every acknowledged update is there exactly once"
    );

    let (d, r) = (shard_index(&donor)?, shard_index(&recipient)?);
    let on_recipient = count_on(&cluster, r, doc! {}).await?;
    let on_donor = count_on(&cluster, d, doc! {}).await?;
    assert_eq!(on_recipient + on_donor, total);
    assert_eq!(
        on_donor,
        DOCS as u64 / 2,
        "the donor keeps exactly the lower half"
    );

    // The donor's copy goes once the range deleter ran.
    let deadline = tokio::time::Instant::now() + DELETION_WAIT;
    loop {
        let stored = stored_on(&cluster, d).await?;
        if stored == DOCS / 2 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "donor still stores {stored}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn move_range_splits_and_moves_part_of_a_chunk() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;
    // Placement is this test's to decide.
    admin(&router, doc! {"balancerStop": 1}).await?;
    admin(&router, doc! {"enableSharding": DB}).await?;
    admin(&router, doc! {"shardCollection": NS, "key": {"k": 1}}).await?;
    insert_all(&router).await?;
    let donor = primary_shard(&router, DB).await?;
    let recipient = other_shard(&router, &donor).await?;
    admin(
        &router,
        doc! {"moveRange": NS, "min": {"k": 1_000}, "max": {"k": 3_000}, "toShard": &recipient},
    )
    .await?;
    assert_eq!(
        count_on(&cluster, shard_index(&recipient)?, doc! {}).await?,
        2_000
    );
    let coll = router.database(DB).collection::<Document>(COLL);
    assert_eq!(coll.count_documents(doc! {}).await?, DOCS as u64);
    assert_eq!(chunks_of(&router, NS).await?.len(), 3);
    cluster.finish();
    Ok(())
}
