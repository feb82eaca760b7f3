//! The first acceptance scenario, end to end over real processes: a config server, two
//! shards and a router; addShard, enableSharding, shardCollection on `{k: 1}`, split at 5000, the
//! empty upper chunk moved to the second shard, 10,000 inserts that must land on the right shard
//! (checked through each shard's own wire port), a scatter-gather sorted find, updates and deletes
//! with and without the shard key, and finally SIGKILL + restart of every process with every
//! count unchanged.

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::{Client, Collection, options::FindOptions};
use shoal_tests::{
    Node, TestCluster,
    mongo::{get_i64, is_ok},
    sharding::{admin, check_tiling, chunks_of, list_shards, primary_shard},
};

const DB: &str = "e2e";
const COLL: &str = "coll";
const NS: &str = "e2e.coll";
const DOCS: i32 = 10_000;
const MIDDLE: i32 = 5_000;
const INSERT_BATCH: i32 = 2_500;
/// Documents carry `group = k % GROUPS`, a field that is not the shard key.
const GROUPS: i32 = 10;

/// Counts that must survive a SIGKILL of every process.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    total: u64,
    lower_shard: u64,
    upper_shard: u64,
    tagged_one: u64,
    tagged_three: u64,
    top7: Vec<i32>,
}

#[tokio::test(flavor = "multi_thread")]
async fn sharded_cluster_end_to_end() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_without_shards(2).await?;
    let router = cluster.router_client().await?;

    add_both_shards(&cluster, &router).await?;
    let (lower, upper) = shard_split_move(&cluster, &router).await?;
    insert_documents(&router).await?;
    check_shard_ranges(&cluster, lower, upper, (5_000, 5_000)).await?;
    check_sorted_scatter_find(&router).await?;
    update_and_delete(&router).await?;
    check_config_metadata(&router).await?;

    let before = counts(&cluster, &router, lower, upper).await?;
    assert_eq!(before.total, 8_999);
    assert_eq!(before.lower_shard, 4_500);
    assert_eq!(before.upper_shard, 4_499);
    drop(router);

    cluster.kill_all();
    for node in cluster.nodes() {
        assert!(
            !cluster.is_running(node),
            "{node:?} still runs after SIGKILL"
        );
    }
    cluster.start_all().await?;
    let router = cluster.router_client().await?;
    let after = counts(&cluster, &router, lower, upper).await?;
    assert_eq!(before, after, "counts changed across SIGKILL and restart");
    check_shard_ranges(&cluster, lower, upper, (4_500, 4_499)).await?;
    check_config_metadata(&router).await?;

    drop(router);
    cluster.finish();
    Ok(())
}

async fn add_both_shards(cluster: &TestCluster, router: &Client) -> anyhow::Result<()> {
    for i in 0..2 {
        let reply = admin(
            router,
            doc! { "addShard": cluster.shard_connection_string(i) },
        )
        .await?;
        assert_eq!(
            reply.get_str("shardAdded").ok(),
            Some(format!("shard{i}").as_str()),
            "{reply}"
        );
    }
    let mut names = list_shards(router).await?;
    names.sort();
    assert_eq!(names, vec!["shard0".to_owned(), "shard1".to_owned()]);
    Ok(())
}

/// Returns the shard nodes holding the lower (primary) and upper halves.
async fn shard_split_move(cluster: &TestCluster, router: &Client) -> anyhow::Result<(Node, Node)> {
    admin(router, doc! { "enableSharding": DB }).await?;
    admin(router, doc! { "shardCollection": NS, "key": { "k": 1 } }).await?;
    admin(router, doc! { "split": NS, "middle": { "k": MIDDLE } }).await?;
    let primary = primary_shard(router, DB).await?;
    let lower = shard_node(cluster, &primary)?;
    let upper = match lower {
        Node::Shard(0) => Node::Shard(1),
        _ => Node::Shard(0),
    };
    let upper_name = node_shard_name(upper);
    admin(
        router,
        doc! { "moveChunk": NS, "find": { "k": MIDDLE }, "to": &upper_name },
    )
    .await?;
    let chunks = check_tiling(&chunks_of(router, NS).await?, "k")?;
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[0].get_str("shard")?, primary);
    assert_eq!(chunks[1].get_str("shard")?, upper_name);
    assert_eq!(chunks[1].get_document("min")?, &doc! { "k": MIDDLE });
    Ok((lower, upper))
}

fn shard_node(cluster: &TestCluster, name: &str) -> anyhow::Result<Node> {
    (0..cluster.shard_count())
        .find(|i| format!("shard{i}") == name)
        .map(Node::Shard)
        .ok_or_else(|| anyhow::anyhow!("unknown shard {name}"))
}

fn node_shard_name(node: Node) -> String {
    match node {
        Node::Shard(i) => format!("shard{i}"),
        other => format!("{other:?}"),
    }
}

async fn insert_documents(router: &Client) -> anyhow::Result<()> {
    let coll: Collection<Document> = router.database(DB).collection(COLL);
    for start in (0..DOCS).step_by(INSERT_BATCH as usize) {
        let batch: Vec<Document> = (start..start + INSERT_BATCH)
            .map(
                |k| doc! { "k": k, "group": k % GROUPS, "payload": format!("document number {k}") },
            )
            .collect();
        let result = coll.insert_many(batch).await?;
        assert_eq!(result.inserted_ids.len(), INSERT_BATCH as usize);
    }
    assert_eq!(coll.count_documents(doc! {}).await?, DOCS as u64);
    Ok(())
}

/// Through each shard's own wire port: the lower shard holds only keys in `[0, 5000)` and the
/// upper shard only keys in `[5000, 10000)`, both ends present, `expected` documents each.
async fn check_shard_ranges(
    cluster: &TestCluster,
    lower: Node,
    upper: Node,
    expected: (u64, u64),
) -> anyhow::Result<()> {
    let halves = [
        (lower, 0, MIDDLE - 1, expected.0),
        (upper, MIDDLE, DOCS - 1, expected.1),
    ];
    for (node, min, max, half) in halves {
        let client = cluster.member_client(node).await?;
        let coll: Collection<Document> = client.database(DB).collection(COLL);
        assert_eq!(
            coll.count_documents(doc! {}).await?,
            half,
            "{node:?} document count"
        );
        let reply = client
            .database(DB)
            .run_command(doc! { "count": COLL })
            .await?;
        assert!(is_ok(&reply), "{reply}");
        assert_eq!(
            get_i64(&reply, "n"),
            Some(half as i64),
            "{node:?} count command: {reply}"
        );
        let outside = doc! { "$or": [ { "k": { "$lt": min } }, { "k": { "$gt": max } } ] };
        assert_eq!(
            coll.count_documents(outside).await?,
            0,
            "{node:?} holds keys outside its range"
        );
        assert_eq!(end_key(&coll, 1).await?, min, "{node:?} smallest k");
        assert_eq!(end_key(&coll, -1).await?, max, "{node:?} largest k");
    }
    Ok(())
}

async fn end_key(coll: &Collection<Document>, direction: i32) -> anyhow::Result<i32> {
    let first = coll
        .find_one(doc! {})
        .sort(doc! { "k": direction })
        .await?
        .ok_or_else(|| anyhow::anyhow!("empty collection"))?;
    Ok(first.get_i32("k")?)
}

async fn top7(router: &Client) -> anyhow::Result<Vec<i32>> {
    let coll: Collection<Document> = router.database(DB).collection(COLL);
    // The filter is on `group`, not on the shard key, so the router must ask both shards and
    // merge their sorted streams.
    let options = FindOptions::builder()
        .sort(doc! { "k": -1 })
        .limit(7)
        .build();
    let docs: Vec<Document> = coll
        .find(doc! { "group": { "$gte": 0 } })
        .with_options(options)
        .await?
        .try_collect()
        .await?;
    docs.iter().map(|d| Ok(d.get_i32("k")?)).collect()
}

async fn check_sorted_scatter_find(router: &Client) -> anyhow::Result<()> {
    assert_eq!(
        top7(router).await?,
        (9_993..=9_999).rev().collect::<Vec<i32>>()
    );
    Ok(())
}

async fn update_and_delete(router: &Client) -> anyhow::Result<()> {
    let coll: Collection<Document> = router.database(DB).collection(COLL);

    let one = coll
        .update_one(doc! { "k": 42 }, doc! { "$set": { "tag": "one" } })
        .await?;
    assert_eq!((one.matched_count, one.modified_count), (1, 1));
    let doc42 = coll
        .find_one(doc! { "k": 42 })
        .await?
        .ok_or_else(|| anyhow::anyhow!("k=42 gone"))?;
    assert_eq!(doc42.get_str("tag")?, "one");

    // group 3 holds k = 3, 13, ..., 9993: 1,000 documents spread over both shards.
    let many = coll
        .update_many(doc! { "group": 3 }, doc! { "$set": { "tag": "three" } })
        .await?;
    assert_eq!((many.matched_count, many.modified_count), (1_000, 1_000));
    assert_eq!(coll.count_documents(doc! { "tag": "three" }).await?, 1_000);
    assert_eq!(
        coll.count_documents(doc! { "tag": "three", "k": { "$gte": MIDDLE } })
            .await?,
        500
    );

    let deleted = coll.delete_one(doc! { "k": 7_777 }).await?;
    assert_eq!(deleted.deleted_count, 1);
    assert_eq!(coll.count_documents(doc! { "k": 7_777 }).await?, 0);

    // group 5 holds 500 documents on each shard (7,777 is in group 7).
    let deleted = coll.delete_many(doc! { "group": 5 }).await?;
    assert_eq!(deleted.deleted_count, 1_000);
    assert_eq!(coll.count_documents(doc! { "group": 5 }).await?, 0);
    assert_eq!(coll.count_documents(doc! {}).await?, 8_999);
    Ok(())
}

async fn check_config_metadata(router: &Client) -> anyhow::Result<()> {
    let chunks = check_tiling(&chunks_of(router, NS).await?, "k")?;
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    let shards: std::collections::BTreeSet<&str> = chunks
        .iter()
        .filter_map(|chunk| chunk.get_str("shard").ok())
        .collect();
    assert_eq!(shards.len(), 2, "chunks are not on two shards: {chunks:?}");

    let config_shards: Vec<Document> = router
        .database("config")
        .collection::<Document>("shards")
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    let mut ids: Vec<&str> = config_shards
        .iter()
        .filter_map(|s| s.get_str("_id").ok())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["shard0", "shard1"], "{config_shards:?}");
    for shard in &config_shards {
        assert!(
            matches!(shard.get("host"), Some(Bson::String(_))),
            "{shard}"
        );
    }
    Ok(())
}

async fn counts(
    cluster: &TestCluster,
    router: &Client,
    lower: Node,
    upper: Node,
) -> anyhow::Result<Counts> {
    let coll: Collection<Document> = router.database(DB).collection(COLL);
    let per_shard = |node: Node| async move {
        let client = cluster.member_client(node).await?;
        let count = client
            .database(DB)
            .collection::<Document>(COLL)
            .count_documents(doc! {})
            .await?;
        anyhow::Ok(count)
    };
    Ok(Counts {
        total: coll.count_documents(doc! {}).await?,
        lower_shard: per_shard(lower).await?,
        upper_shard: per_shard(upper).await?,
        tagged_one: coll.count_documents(doc! { "tag": "one" }).await?,
        tagged_three: coll.count_documents(doc! { "tag": "three" }).await?,
        top7: top7(router).await?,
    })
}
