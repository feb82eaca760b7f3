//! Updates that change a document's shard key, as MongoDB defines them: inside a retryable write
//! (the drivers' default) the document moves to the shard owning its new key; outside one the
//! update is refused (IllegalOperation, or InvalidOptions for multi updates). A router that
//! crashes in the middle of a move loses nothing: another router (or the same one restarted)
//! finishes it from the donor's move record, and the document ends up exactly once.

use std::time::{Duration, Instant};

use bson::{Document, doc};
use mongodb::{Client, Collection, options::ReturnDocument};
use shoal_tests::{
    Node, TestCluster,
    mongo::error_code,
    sharding::{SplitPlacement, shard_and_split, shard_index},
};

/// How long recovery may take: its grace period (10 s) plus a pass interval (5 s) and slack.
const RECOVERY_BOUND: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(250);

async fn setup(
    cluster: &TestCluster,
    db: &str,
) -> anyhow::Result<(Collection<Document>, SplitPlacement)> {
    let router = cluster.router_client().await?;
    let placement = shard_and_split(&router, db, "c", "k", bson::Bson::Int32(500)).await?;
    let coll = router.database(db).collection::<Document>("c");
    coll.insert_many(vec![
        doc! {"_id": 1, "k": 1, "v": "a"},
        doc! {"_id": 2, "k": 2, "v": "b"},
    ])
    .await?;
    Ok((coll, placement))
}

async fn count_on(
    cluster: &TestCluster,
    shard: &str,
    db: &str,
    filter: Document,
) -> anyhow::Result<u64> {
    let client: Client = cluster
        .member_client(Node::Shard(shard_index(shard)?))
        .await?;
    Ok(client
        .database(db)
        .collection::<Document>("c")
        .count_documents(filter)
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn retryable_updates_move_documents_and_others_are_refused() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let (coll, placement) = setup(&cluster, "moves").await?;

    let result = coll
        .update_one(doc! {"k": 1}, doc! {"$set": {"k": 600, "moved": true}})
        .await?;
    assert_eq!((result.matched_count, result.modified_count), (1, 1));
    assert_eq!(
        count_on(&cluster, &placement.lower, "moves", doc! {"_id": 1}).await?,
        0
    );
    assert_eq!(
        count_on(
            &cluster,
            &placement.upper,
            "moves",
            doc! {"_id": 1, "k": 600}
        )
        .await?,
        1
    );
    assert_eq!(coll.count_documents(doc! {"k": 600}).await?, 1);

    let back = coll
        .find_one_and_update(doc! {"k": 600}, doc! {"$set": {"k": 3}})
        .return_document(ReturnDocument::After)
        .await?
        .expect("the moved document");
    assert_eq!(back.get_i32("k")?, 3);
    assert_eq!(
        count_on(&cluster, &placement.lower, "moves", doc! {"_id": 1, "k": 3}).await?,
        1
    );
    assert_eq!(coll.count_documents(doc! {}).await?, 2);

    // A sorted findAndModify across shards moves the globally first document.
    coll.insert_one(doc! {"_id": 3, "k": 700, "v": "c"}).await?;
    let moved = coll
        .find_one_and_update(doc! {"v": {"$exists": true}}, doc! {"$set": {"k": 5}})
        .sort(doc! {"k": -1})
        .return_document(ReturnDocument::After)
        .await?
        .expect("the highest-k document");
    assert_eq!((moved.get_i32("_id")?, moved.get_i32("k")?), (3, 5));
    assert_eq!(
        count_on(&cluster, &placement.lower, "moves", doc! {"_id": 3}).await?,
        1
    );
    assert_eq!(
        count_on(&cluster, &placement.upper, "moves", doc! {"_id": 3}).await?,
        0
    );

    // Outside a retryable write MongoDB refuses, and so do we.
    let db = coll.client().database("moves");
    let single = doc! {"update": "c", "updates": [{"q": {"k": 2}, "u": {"$set": {"k": 700}}}]};
    let reply = db.run_command(single).await?;
    let code = reply.get_array("writeErrors")?[0]
        .as_document()
        .expect("write error")
        .get_i32("code")?;
    assert_eq!(code, 20);
    let multi = doc! {"update": "c", "updates": [{"q": {"k": 2}, "u": {"$set": {"k": 700}}, "multi": true}]};
    let reply = db.run_command(multi).await?;
    let code = reply.get_array("writeErrors")?[0]
        .as_document()
        .expect("write error")
        .get_i32("code")?;
    assert_eq!(code, 72);
    assert_eq!(coll.count_documents(doc! {"k": 2}).await?, 1);
    assert_eq!(coll.count_documents(doc! {}).await?, 3);
    cluster.finish();
    Ok(())
}

async fn crash_and_recover(failpoint: &str) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(2).await?;
    let db = "crashmoves";
    let (_, placement) = setup(&cluster, db).await?;
    cluster
        .restart_with_env(Node::Router, &[("SHOAL_FAILPOINTS", failpoint)])
        .await?;
    let router = cluster.router_client().await?;
    let coll = router.database(db).collection::<Document>("c");
    let crashed = coll
        .update_one(doc! {"k": 1}, doc! {"$set": {"k": 600}})
        .await;
    assert!(
        crashed.is_err(),
        "the router should have died at {failpoint}"
    );
    if let Err(error) = &crashed {
        assert_ne!(error_code(error), Some(66), "{error}");
    }
    cluster.wait_exit(Node::Router).await?;
    cluster.restart(Node::Router).await?;
    let router = cluster.router_client().await?;
    let coll = router.database(db).collection::<Document>("c");
    let started = Instant::now();
    loop {
        let moved = coll.count_documents(doc! {"_id": 1, "k": 600}).await?;
        let pending = cluster
            .member_client(Node::Shard(shard_index(&placement.lower)?))
            .await?
            .database("admin")
            .collection::<Document>("shoalKeyMoves")
            .count_documents(doc! {})
            .await?;
        if moved == 1 && pending == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < RECOVERY_BOUND,
            "move not recovered after {failpoint}: moved {moved}, pending {pending}"
        );
        tokio::time::sleep(POLL).await;
    }
    println!(
        "recovered a move interrupted at {failpoint} in {:?}",
        started.elapsed()
    );
    assert_eq!(
        coll.count_documents(doc! {"_id": 1}).await?,
        1,
        "exactly once"
    );
    assert_eq!(
        count_on(&cluster, &placement.lower, db, doc! {"_id": 1}).await?,
        0
    );
    assert_eq!(
        count_on(&cluster, &placement.upper, db, doc! {"_id": 1}).await?,
        1
    );
    assert_eq!(coll.count_documents(doc! {}).await?, 2);
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_interrupted_after_the_donor_step_is_finished() -> anyhow::Result<()> {
    crash_and_recover("keyMove.afterDonorCommit").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_interrupted_after_the_recipient_step_is_finished() -> anyhow::Result<()> {
    crash_and_recover("keyMove.afterRecipientInsert").await
}
