//! The balancer honours zones: once each shard has a zone and the collection's key ranges are
//! assigned to them, every document ends on a shard of its range's zone (split at the zone
//! boundary, then moved), and no document is lost or duplicated on the way.

use std::time::Duration;

use bson::{Bson, Document, doc};
use mongodb::Collection;
use shoal_tests::{Node, TestCluster, sharding::admin};

const DOCS: i64 = 20_000;
const BOUNDARY: i64 = 8_000;
/// How long the balancer may take to satisfy the zones.
const ZONE_WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn the_balancer_moves_ranges_onto_their_zones() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;
    admin(&router, doc! {"enableSharding": "z"}).await?;
    admin(&router, doc! {"shardCollection": "z.c", "key": {"k": 1}}).await?;
    let coll: Collection<Document> = router.database("z").collection("c");
    let docs: Vec<Document> = (0..DOCS)
        .map(|k| doc! {"_id": k, "k": k, "pad": "z".repeat(300)})
        .collect();
    for part in docs.chunks(5_000) {
        coll.insert_many(part.to_vec()).await?;
    }
    admin(&router, doc! {"addShardToZone": "shard0", "zone": "low"}).await?;
    admin(&router, doc! {"addShardToZone": "shard1", "zone": "high"}).await?;
    admin(
        &router,
        doc! {"updateZoneKeyRange": "z.c", "min": {"k": Bson::MinKey}, "max": {"k": BOUNDARY}, "zone": "low"},
    )
    .await?;
    admin(
        &router,
        doc! {"updateZoneKeyRange": "z.c", "min": {"k": BOUNDARY}, "max": {"k": Bson::MaxKey}, "zone": "high"},
    )
    .await?;

    let deadline = tokio::time::Instant::now() + ZONE_WAIT;
    loop {
        let mut counts = Vec::new();
        for (i, filter) in [
            doc! {"k": {"$lt": BOUNDARY}},
            doc! {"k": {"$gte": BOUNDARY}},
        ]
        .into_iter()
        .enumerate()
        {
            let client = cluster.member_client(Node::Shard(i)).await?;
            let on_shard: Collection<Document> = client.database("z").collection("c");
            counts.push((
                on_shard.count_documents(filter).await?,
                on_shard.count_documents(doc! {}).await?,
            ));
        }
        let (low, high) = (counts[0], counts[1]);
        if low == (BOUNDARY as u64, BOUNDARY as u64)
            && high == ((DOCS - BOUNDARY) as u64, (DOCS - BOUNDARY) as u64)
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "zones not satisfied: shard0 (in zone, all) {low:?}, shard1 {high:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(coll.count_documents(doc! {}).await?, DOCS as u64);
    let chunks = shoal_tests::sharding::chunks_of(&router, "z.c").await?;
    for chunk in &chunks {
        let min = chunk.get_document("min")?;
        let low = match min.get("k") {
            Some(Bson::MinKey) => true,
            Some(Bson::Int64(k)) => *k < BOUNDARY,
            Some(Bson::Int32(k)) => i64::from(*k) < BOUNDARY,
            _ => false,
        };
        let expected = if low { "shard0" } else { "shard1" };
        assert_eq!(chunk.get_str("shard")?, expected, "{chunk}");
    }
    cluster.finish();
    Ok(())
}
