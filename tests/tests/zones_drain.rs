//! Zones, shard removal and `movePrimary`, through the router as a driver sees them.
//!
//! - Zone commands keep `config.shards.tags` and `config.tags` in MongoDB's shapes and refuse
//!   overlapping ranges, unknown zones, bounds that do not fit the shard key, and removing the
//!   last shard of a zone that still has ranges.
//! - `removeShard` goes through `started` (the shard is marked draining and new databases avoid
//!   it), `ongoing` while it is a database's primary, and `completed`; the last shard stays.
//! - `movePrimary` moves unsharded collections with their documents and indexes; writes sent
//!   while it copies wait for it and land on the new primary, none lost.
//!
//! Draining a shard that owns chunks needs chunk migration and is tested with it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::Client;
use shoal_tests::{
    Node, TestCluster,
    mongo::{error_code, get_i64},
    sharding::{admin, list_shards, primary_shard, shard_index},
};

async fn admin_error(client: &Client, command: Document) -> anyhow::Result<i32> {
    match client.database("admin").run_command(command.clone()).await {
        Ok(reply) => anyhow::bail!("{command} succeeded: {reply}"),
        Err(error) => {
            error_code(&error).ok_or_else(|| anyhow::anyhow!("{command}: no code in {error}"))
        }
    }
}

async fn config_docs(
    client: &Client,
    coll: &str,
    filter: Document,
) -> anyhow::Result<Vec<Document>> {
    let cursor = client
        .database("config")
        .collection::<Document>(coll)
        .find(filter)
        .await?;
    Ok(cursor.try_collect().await?)
}

async fn shard_tags(client: &Client, shard: &str) -> anyhow::Result<Vec<Bson>> {
    let shards = config_docs(client, "shards", doc! {"_id": shard}).await?;
    let shard_doc = shards
        .first()
        .ok_or_else(|| anyhow::anyhow!("no config.shards entry for {shard}"))?;
    Ok(shard_doc.get_array("tags").cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zone_commands_keep_config_tags_consistent() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    admin(&client, doc! {"enableSharding": "z"}).await?;
    admin(&client, doc! {"shardCollection": "z.c", "key": {"k": 1}}).await?;

    admin(&client, doc! {"addShardToZone": "shard0", "zone": "A"}).await?;
    admin(&client, doc! {"addShardToZone": "shard0", "zone": "A"}).await?;
    assert_eq!(shard_tags(&client, "shard0").await?, vec![Bson::from("A")]);
    let missing_shard = doc! {"addShardToZone": "nope", "zone": "A"};
    assert_eq!(admin_error(&client, missing_shard).await?, 70);

    let range = doc! {"updateZoneKeyRange": "z.c", "min": {"k": 0}, "max": {"k": 10}, "zone": "A"};
    admin(&client, range.clone()).await?;
    // The same range and zone again is a no-op, as in MongoDB.
    admin(&client, range).await?;
    let tags = config_docs(&client, "tags", doc! {}).await?;
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert_eq!(tags[0].get_str("ns")?, "z.c");
    assert_eq!(tags[0].get_document("min")?, &doc! {"k": 0});
    assert_eq!(tags[0].get_document("max")?, &doc! {"k": 10});
    assert_eq!(tags[0].get_str("tag")?, "A");
    assert!(matches!(tags[0].get("_id"), Some(Bson::ObjectId(_))));

    let overlap =
        doc! {"updateZoneKeyRange": "z.c", "min": {"k": 5}, "max": {"k": 15}, "zone": "A"};
    assert_eq!(
        admin_error(&client, overlap).await?,
        178,
        "RangeOverlapConflict"
    );
    let unknown =
        doc! {"updateZoneKeyRange": "z.c", "min": {"k": 20}, "max": {"k": 30}, "zone": "B"};
    assert_eq!(admin_error(&client, unknown).await?, 177, "ZoneNotFound");
    let wrong_key =
        doc! {"updateZoneKeyRange": "z.c", "min": {"x": 20}, "max": {"x": 30}, "zone": "A"};
    assert_eq!(
        admin_error(&client, wrong_key).await?,
        61,
        "ShardKeyNotFound"
    );
    let unsharded =
        doc! {"updateZoneKeyRange": "z.u", "min": {"k": 20}, "max": {"k": 30}, "zone": "A"};
    assert_eq!(
        admin_error(&client, unsharded).await?,
        118,
        "NamespaceNotSharded"
    );
    let in_use = doc! {"removeShardFromZone": "shard0", "zone": "A"};
    assert_eq!(
        admin_error(&client, in_use.clone()).await?,
        163,
        "ZoneStillInUse"
    );
    assert_eq!(
        admin_error(&client, doc! {"removeShard": "shard0"}).await?,
        163
    );

    let remove =
        doc! {"updateZoneKeyRange": "z.c", "min": {"k": 0}, "max": {"k": 10}, "zone": Bson::Null};
    admin(&client, remove).await?;
    assert!(config_docs(&client, "tags", doc! {}).await?.is_empty());
    admin(&client, in_use).await?;
    assert!(shard_tags(&client, "shard0").await?.is_empty());
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remove_shard_drains_through_started_ongoing_and_completed() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    let client = cluster.router_client().await?;
    admin(&client, doc! {"enableSharding": "first"}).await?;
    let first_primary = primary_shard(&client, "first").await?;
    let empty = ["shard0", "shard1", "shard2"]
        .into_iter()
        .rfind(|shard| *shard != first_primary)
        .ok_or_else(|| anyhow::anyhow!("no shard besides {first_primary}"))?;

    let started = admin(&client, doc! {"removeShard": empty}).await?;
    assert_eq!(started.get_str("state")?, "started", "{started}");
    assert_eq!(started.get_str("msg")?, "draining started successfully");
    assert_eq!(started.get_str("shard")?, empty);
    assert!(started.get_array("dbsToMove")?.is_empty());
    let draining = config_docs(&client, "shards", doc! {"_id": empty}).await?;
    assert!(draining[0].get_bool("draining")?);
    // A new database never gets a draining shard as its primary.
    for db in ["second", "third"] {
        admin(&client, doc! {"enableSharding": db}).await?;
        assert_ne!(primary_shard(&client, db).await?, empty, "{db}");
    }
    let completed = admin(&client, doc! {"removeShard": empty}).await?;
    assert_eq!(completed.get_str("state")?, "completed", "{completed}");
    assert_eq!(
        completed.get_str("msg")?,
        "removeshard completed successfully"
    );
    assert!(!list_shards(&client).await?.contains(&empty.to_owned()));
    assert_eq!(admin_error(&client, doc! {"removeShard": empty}).await?, 70);

    // A shard that is still a database's primary drains until that database moves.
    let busy = primary_shard(&client, "first").await?;
    let other = list_shards(&client)
        .await?
        .into_iter()
        .find(|shard| *shard != busy)
        .ok_or_else(|| anyhow::anyhow!("one shard left"))?;
    client
        .database("first")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await?;
    let started = admin(&client, doc! {"removeShard": &busy}).await?;
    assert_eq!(started.get_str("state")?, "started");
    let dbs_to_move = started.get_array("dbsToMove")?;
    assert!(dbs_to_move.contains(&Bson::from("first")), "{started}");
    let ongoing = admin(&client, doc! {"removeShard": &busy}).await?;
    assert_eq!(ongoing.get_str("state")?, "ongoing", "{ongoing}");
    assert_eq!(ongoing.get_str("msg")?, "draining ongoing");
    let remaining = ongoing.get_document("remaining")?;
    assert_eq!(get_i64(remaining, "chunks"), Some(0));
    assert_eq!(get_i64(remaining, "jumboChunks"), Some(0));
    assert!(get_i64(remaining, "dbs").is_some_and(|dbs| dbs >= 1));
    let movable: Vec<String> = ongoing
        .get_array("dbsToMove")?
        .iter()
        .filter_map(|db| db.as_str().map(str::to_owned))
        .collect();
    for db in &movable {
        admin(&client, doc! {"movePrimary": db, "to": &other}).await?;
    }
    let completed = admin(&client, doc! {"removeShard": &busy}).await?;
    assert_eq!(completed.get_str("state")?, "completed", "{completed}");
    let moved = client.database("first").collection::<Document>("c");
    assert_eq!(moved.count_documents(doc! {}).await?, 1);

    let last = doc! {"removeShard": &other};
    assert_eq!(
        admin_error(&client, last).await?,
        20,
        "the last shard stays"
    );
    cluster.finish();
    Ok(())
}

/// Inserts `{_id: n, w: true}` for n = 0, 1, ... through the router until told to stop; returns
/// how many were acknowledged (each one, in order).
async fn insert_until(client: Client, stop: Arc<AtomicBool>) -> anyhow::Result<i64> {
    let coll = client.database("mp").collection::<Document>("a");
    let mut acknowledged = 0_i64;
    while !stop.load(Ordering::SeqCst) {
        coll.insert_one(doc! {"_id": 1_000_000 + acknowledged, "w": true})
            .await?;
        acknowledged += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(acknowledged)
}

async fn index_names(client: &Client, coll: &str) -> anyhow::Result<Vec<String>> {
    let mut names = client
        .database("mp")
        .collection::<Document>(coll)
        .list_index_names()
        .await?;
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_primary_moves_collections_indexes_and_concurrent_writes() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    admin(&client, doc! {"enableSharding": "mp"}).await?;
    let from = primary_shard(&client, "mp").await?;
    let to = if from == "shard0" { "shard1" } else { "shard0" };
    let db = client.database("mp");
    let a = db.collection::<Document>("a");
    let b = db.collection::<Document>("b");
    let pad = "x".repeat(2_000);
    // About 6 MB in `a`: more than one copy batch.
    let docs: Vec<Document> = (0..3_000)
        .map(|i| doc! {"_id": i, "x": i % 97, "pad": pad.clone()})
        .collect();
    a.insert_many(docs).await?;
    b.insert_many((0..500).map(|i| doc! {"_id": i, "email": format!("u{i}@x")}))
        .await?;
    a.create_index(mongodb::IndexModel::builder().keys(doc! {"x": 1}).build())
        .await?;
    let unique = mongodb::options::IndexOptions::builder()
        .unique(true)
        .build();
    b.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"email": 1})
            .options(unique)
            .build(),
    )
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(insert_until(
        cluster.router_client().await?,
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved = admin(&client, doc! {"movePrimary": "mp", "to": to}).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let acknowledged = writer.await??;
    assert!(acknowledged > 0, "no write went through around the move");
    eprintln!("movePrimary answered {moved}; {acknowledged} concurrent inserts acknowledged");

    assert_eq!(primary_shard(&client, "mp").await?, to);
    let written = a.count_documents(doc! {"w": true}).await?;
    assert_eq!(
        written,
        u64::try_from(acknowledged)?,
        "acknowledged inserts lost"
    );
    assert_eq!(
        a.count_documents(doc! {"w": {"$exists": false}}).await?,
        3_000
    );
    assert_eq!(b.count_documents(doc! {}).await?, 500);
    assert_eq!(a.count_documents(doc! {"x": 5}).await?, 31);
    assert_eq!(index_names(&client, "a").await?, ["_id_", "x_1"]);
    assert_eq!(index_names(&client, "b").await?, ["_id_", "email_1"]);
    // The unique index came along: a duplicate is refused on the new primary.
    let duplicate = b.insert_one(doc! {"_id": 9_999, "email": "u1@x"}).await;
    assert_eq!(duplicate.err().as_ref().and_then(error_code), Some(11_000));

    // The old primary no longer holds the collections; the new one does.
    let old = cluster
        .member_client(Node::Shard(shard_index(&from)?))
        .await?;
    let mut old_names = old.database("mp").list_collection_names().await?;
    old_names.retain(|name| name == "a" || name == "b");
    assert!(old_names.is_empty(), "left on {from}: {old_names:?}");
    let new = cluster.member_client(Node::Shard(shard_index(to)?)).await?;
    let on_new = new.database("mp").collection::<Document>("a");
    assert_eq!(on_new.count_documents(doc! {}).await?, 3_000 + written);

    // Moving to the current primary is a no-op; to a missing shard an error.
    admin(&client, doc! {"movePrimary": "mp", "to": to}).await?;
    let missing = doc! {"movePrimary": "mp", "to": "nope"};
    assert_eq!(admin_error(&client, missing).await?, 70);
    let no_db = doc! {"movePrimary": "absent", "to": to};
    assert_eq!(admin_error(&client, no_db).await?, 26);
    cluster.finish();
    Ok(())
}
