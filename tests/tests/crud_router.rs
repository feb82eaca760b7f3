//! CRUD and command semantics at the router, checked against what MongoDB answers: ordered and
//! unordered batches with a duplicate `_id`, the 16 MiB document limit, error codes for unknown
//! and wrong-typed commands, cursors spanning two shards, counts and distinct on a sharded
//! collection, unsharded collections living on their database's primary shard, catalog commands,
//! and sessions (`lsid`/`txnNumber`).

use std::collections::BTreeSet;

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::{Client, Collection, Database, options::FindOptions};
use shoal_tests::{
    Node, TestCluster,
    mongo::{error_code, get_i64, is_ok},
    sharding::{admin, primary_shard, shard_and_split, shard_index, shard_split_move},
};

/// BSONObjectTooLarge.
const CODE_TOO_LARGE: i32 = 10_334;
/// DuplicateKey.
const CODE_DUPLICATE_KEY: i32 = 11_000;
/// CommandNotFound.
const CODE_COMMAND_NOT_FOUND: i32 = 59;
/// CursorNotFound.
const CODE_CURSOR_NOT_FOUND: i32 = 43;
/// The codes MongoDB uses for a command field of the wrong type: TypeMismatch, InvalidNamespace
/// (a non-string collection name), BadValue.
const CODES_WRONG_TYPE: [i32; 3] = [14, 73, 2];
/// The BSON document size limit.
const BSON_OBJECT_BYTES_MAX: usize = 16 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn inserts_limits_and_sessions() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;
    let db = router.database("crud");

    duplicate_in_unsharded_batch(&db).await?;
    admin(&router, doc! { "enableSharding": "crudsh" }).await?;
    duplicate_in_sharded_batch(&router).await?;
    document_too_large(&db).await?;
    sessions_and_txn_numbers(&router).await?;

    drop(router);
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn command_errors_and_catalog() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;

    unknown_and_wrong_typed_commands(&router).await?;
    catalog_commands(&router).await?;

    drop(router);
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cursors_counts_and_placement() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;
    let placement = shard_and_split(&router, "reads", "c", "k", Bson::Int32(500)).await?;
    let coll: Collection<Document> = router.database("reads").collection("c");
    let docs: Vec<Document> = (0..1_000)
        .map(|k| doc! { "k": k, "even": k % 2 == 0 })
        .collect();
    coll.insert_many(docs).await?;
    for (shard, expected) in [(&placement.lower, 500), (&placement.upper, 500)] {
        let node = Node::Shard(shard_index(shard)?);
        let count = shard_count(&cluster, node, "reads", "c").await?;
        assert_eq!(count, expected, "{shard} holds {count} of reads.c");
    }

    cursor_batches(&coll).await?;
    get_more_and_kill_cursors(&router).await?;
    counts_and_distinct(&router, &coll).await?;
    unsharded_on_primary(&cluster, &router, "reads", "plain").await?;
    unsharded_on_primary(&cluster, &router, "plaindb", "c").await?;

    drop(router);
    cluster.finish();
    Ok(())
}

/// `[1, 2, 1, 3, 4]` by `_id`: the third document is a duplicate.
fn batch_with_duplicate() -> Vec<Document> {
    [1, 2, 1, 3, 4]
        .iter()
        .map(|id| doc! { "_id": *id, "v": *id })
        .collect()
}

async fn duplicate_in_unsharded_batch(db: &Database) -> anyhow::Result<()> {
    // Through the driver: an InsertMany error whose write error points at index 2.
    for (name, ordered, expected_count) in [("ordered", true, 2), ("unordered", false, 4)] {
        let coll: Collection<Document> = db.collection(name);
        let err = coll
            .insert_many(batch_with_duplicate())
            .ordered(ordered)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("{name} insert with a duplicate _id succeeded"))?;
        let mongodb::error::ErrorKind::InsertMany(failure) = err.kind.as_ref() else {
            anyhow::bail!("{name}: expected an InsertMany error, got {err}");
        };
        let errors = failure.write_errors.clone().unwrap_or_default();
        assert_eq!(errors.len(), 1, "{name}: {errors:?}");
        assert_eq!(
            (errors[0].index, errors[0].code),
            (2, CODE_DUPLICATE_KEY),
            "{name}"
        );
        assert_eq!(
            coll.count_documents(doc! {}).await?,
            expected_count,
            "{name} count"
        );
    }
    // As raw commands, to check the `n` the server reports.
    for (name, ordered, expected_n) in [("raw_ordered", true, 2), ("raw_unordered", false, 4)] {
        let reply = db
            .run_command(
                doc! { "insert": name, "documents": batch_with_duplicate(), "ordered": ordered },
            )
            .await?;
        check_write_errors(&reply, expected_n, &[2], CODE_DUPLICATE_KEY)?;
    }
    Ok(())
}

/// An insert reply has `ok: 1`, `n` documents inserted and write errors at exactly `indexes`,
/// each with `code`.
fn check_write_errors(reply: &Document, n: i64, indexes: &[i64], code: i32) -> anyhow::Result<()> {
    assert!(is_ok(reply), "{reply}");
    assert_eq!(get_i64(reply, "n"), Some(n), "inserted count in {reply}");
    let errors = reply.get_array("writeErrors")?;
    let mut seen = Vec::new();
    for error in errors {
        let error = error
            .as_document()
            .ok_or_else(|| anyhow::anyhow!("writeError {error}"))?;
        assert_eq!(get_i64(error, "code"), Some(i64::from(code)), "{error}");
        assert!(
            error.get_str("errmsg").is_ok(),
            "writeError without errmsg: {error}"
        );
        seen.push(get_i64(error, "index").ok_or_else(|| anyhow::anyhow!("no index: {error}"))?);
    }
    assert_eq!(seen, indexes, "writeErrors indexes in {reply}");
    Ok(())
}

/// A 1,001-document batch into a sharded collection whose document 500 repeats `_id` 10 (same
/// shard key, so the same shard sees both): unordered inserts everything else, ordered stops.
async fn duplicate_in_sharded_batch(router: &Client) -> anyhow::Result<()> {
    let db = router.database("crudsh");
    for (name, ordered, expected_n) in [("ordered", true, 500), ("unordered", false, 1_000)] {
        shard_split_move(router, "crudsh", name, "k", Bson::Int32(500)).await?;
        let mut docs: Vec<Document> = (0..1_000).map(|k| doc! { "_id": k, "k": k }).collect();
        docs.insert(500, doc! { "_id": 10, "k": 10 });
        let reply = db
            .run_command(doc! { "insert": name, "documents": docs, "ordered": ordered })
            .await?;
        check_write_errors(&reply, expected_n, &[500], CODE_DUPLICATE_KEY)?;
        let count = db
            .collection::<Document>(name)
            .count_documents(doc! {})
            .await?;
        assert_eq!(count, expected_n as u64, "crudsh.{name} count");
    }
    Ok(())
}

async fn document_too_large(db: &Database) -> anyhow::Result<()> {
    // The insert command stays within the 16 MiB + 16 KiB a command may take, while the document
    // itself is over 16 MiB: the server, not the driver, must refuse it.
    let big = "x".repeat(BSON_OBJECT_BYTES_MAX);
    let command = doc! { "insert": "big", "documents": [ { "_id": 1, "s": big } ] };
    match db.run_command(command).await {
        Ok(reply) => check_write_errors(&reply, 0, &[0], CODE_TOO_LARGE)?,
        Err(err) => assert_eq!(error_code(&err), Some(CODE_TOO_LARGE), "{err}"),
    }
    assert_eq!(
        db.collection::<Document>("big")
            .count_documents(doc! {})
            .await?,
        0
    );
    Ok(())
}

async fn sessions_and_txn_numbers(router: &Client) -> anyhow::Result<()> {
    let coll: Collection<Document> = router.database("crud").collection("sessions");
    // Retryable writes are on by default: the driver sends `lsid` and `txnNumber` with this.
    coll.insert_one(doc! { "_id": "retryable" }).await?;
    let mut session = router.start_session().await?;
    coll.insert_one(doc! { "_id": "in-session" })
        .session(&mut session)
        .await?;
    coll.insert_many(vec![doc! { "_id": "s1" }, doc! { "_id": "s2" }])
        .session(&mut session)
        .await?;
    let found = coll
        .find_one(doc! { "_id": "in-session" })
        .session(&mut session)
        .await?;
    assert!(found.is_some(), "session insert not visible");
    let updated = coll
        .update_one(doc! { "_id": "s1" }, doc! { "$set": { "x": 1 } })
        .session(&mut session)
        .await?;
    assert_eq!(updated.modified_count, 1);
    drop(session);
    assert_eq!(coll.count_documents(doc! {}).await?, 4);
    Ok(())
}

async fn unknown_and_wrong_typed_commands(router: &Client) -> anyhow::Result<()> {
    let db = router.database("cmds");
    let err = db
        .run_command(doc! { "nosuchcommand": 1 })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an unknown command succeeded"))?;
    assert_eq!(error_code(&err), Some(CODE_COMMAND_NOT_FOUND), "{err}");

    let wrong_types = [
        doc! { "find": 5 },
        doc! { "insert": "c", "documents": 5 },
        doc! { "delete": "c", "deletes": "everything" },
        doc! { "count": "c", "query": 7 },
    ];
    for command in wrong_types {
        let err = db
            .run_command(command.clone())
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("{command} succeeded"))?;
        let code = error_code(&err);
        assert!(
            code.is_some_and(|c| CODES_WRONG_TYPE.contains(&c)),
            "{command}: {err}"
        );
    }
    // The router still serves after the errors.
    let reply = db.run_command(doc! { "ping": 1 }).await?;
    assert!(is_ok(&reply), "{reply}");
    Ok(())
}

async fn catalog_commands(router: &Client) -> anyhow::Result<()> {
    let db = router.database("catalogdb");
    for name in ["a", "b"] {
        db.collection::<Document>(name)
            .insert_one(doc! { "x": 1 })
            .await?;
    }
    db.create_collection("created").await?;
    let names: BTreeSet<String> = db.list_collection_names().await?.into_iter().collect();
    assert_eq!(
        names,
        ["a", "b", "created"].map(str::to_owned).into(),
        "listCollections"
    );
    let databases = router.list_database_names().await?;
    assert!(
        databases.iter().any(|d| d == "catalogdb"),
        "listDatabases: {databases:?}"
    );
    let raw = router
        .database("admin")
        .run_command(doc! { "listDatabases": 1 })
        .await?;
    assert!(is_ok(&raw), "{raw}");
    assert!(raw.get_array("databases").is_ok(), "{raw}");

    db.collection::<Document>("a").drop().await?;
    let names: BTreeSet<String> = db.list_collection_names().await?.into_iter().collect();
    assert_eq!(
        names,
        ["b", "created"].map(str::to_owned).into(),
        "after drop"
    );
    assert_eq!(
        db.collection::<Document>("a")
            .count_documents(doc! {})
            .await?,
        0
    );

    db.drop().await?;
    let databases = router.list_database_names().await?;
    assert!(
        !databases.iter().any(|d| d == "catalogdb"),
        "after dropDatabase: {databases:?}"
    );
    assert!(db.list_collection_names().await?.is_empty());
    Ok(())
}

async fn cursor_batches(coll: &Collection<Document>) -> anyhow::Result<()> {
    // 1,000 documents in batches of 10 from two shards: 100 getMores through the router.
    let sorted = FindOptions::builder()
        .sort(doc! { "k": 1 })
        .batch_size(10)
        .build();
    let docs: Vec<Document> = coll
        .find(doc! {})
        .with_options(sorted)
        .await?
        .try_collect()
        .await?;
    let keys: Vec<i32> = docs
        .iter()
        .map(|d| d.get_i32("k"))
        .collect::<Result<_, _>>()?;
    assert_eq!(keys, (0..1_000).collect::<Vec<i32>>());

    let unsorted: Vec<Document> = coll
        .find(doc! {})
        .batch_size(10)
        .await?
        .try_collect()
        .await?;
    let distinct: BTreeSet<i32> = unsorted
        .iter()
        .filter_map(|d| d.get_i32("k").ok())
        .collect();
    assert_eq!((unsorted.len(), distinct.len()), (1_000, 1_000));

    // skip and limit merged across shards: 495..505 straddles the split at 500.
    let window = FindOptions::builder()
        .sort(doc! { "k": 1 })
        .skip(495)
        .limit(10)
        .build();
    let docs: Vec<Document> = coll
        .find(doc! {})
        .with_options(window)
        .await?
        .try_collect()
        .await?;
    let keys: Vec<i32> = docs
        .iter()
        .map(|d| d.get_i32("k"))
        .collect::<Result<_, _>>()?;
    assert_eq!(keys, (495..505).collect::<Vec<i32>>());
    Ok(())
}

async fn get_more_and_kill_cursors(router: &Client) -> anyhow::Result<()> {
    let db = router.database("reads");
    let reply = db
        .run_command(doc! { "find": "c", "filter": {}, "batchSize": 10 })
        .await?;
    let cursor = reply.get_document("cursor")?;
    let id = cursor.get_i64("id")?;
    assert_ne!(
        id, 0,
        "a 1,000-document find with batchSize 10 closed its cursor: {reply}"
    );
    assert_eq!(cursor.get_array("firstBatch")?.len(), 10);
    assert_eq!(cursor.get_str("ns")?, "reads.c");

    let more = db
        .run_command(doc! { "getMore": id, "collection": "c", "batchSize": 10 })
        .await?;
    let next = more.get_document("cursor")?;
    assert_eq!(next.get_array("nextBatch")?.len(), 10, "{more}");
    assert_eq!(next.get_i64("id")?, id);

    let killed = db
        .run_command(doc! { "killCursors": "c", "cursors": [id] })
        .await?;
    assert_eq!(
        killed.get_array("cursorsKilled")?,
        &vec![Bson::Int64(id)],
        "{killed}"
    );
    let err = db
        .run_command(doc! { "getMore": id, "collection": "c" })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("getMore on a killed cursor succeeded"))?;
    assert_eq!(error_code(&err), Some(CODE_CURSOR_NOT_FOUND), "{err}");
    Ok(())
}

async fn counts_and_distinct(router: &Client, coll: &Collection<Document>) -> anyhow::Result<()> {
    let db = router.database("reads");
    let reply = db.run_command(doc! { "count": "c" }).await?;
    assert_eq!(get_i64(&reply, "n"), Some(1_000), "{reply}");
    let reply = db
        .run_command(doc! { "count": "c", "query": { "k": { "$gte": 250, "$lt": 750 } } })
        .await?;
    assert_eq!(get_i64(&reply, "n"), Some(500), "{reply}");
    assert_eq!(coll.count_documents(doc! { "even": true }).await?, 500);
    assert_eq!(
        coll.count_documents(doc! { "k": { "$in": [1, 999, 5_000] } })
            .await?,
        2
    );
    assert_eq!(
        coll.count_documents(doc! { "$or": [ { "k": 3 }, { "k": 997 } ] })
            .await?,
        2
    );
    assert_eq!(coll.estimated_document_count().await?, 1_000);

    let mut evens = coll.distinct("even", doc! {}).await?;
    evens.sort_by_key(|v| v.as_bool());
    assert_eq!(evens, vec![Bson::Boolean(false), Bson::Boolean(true)]);
    let keys = coll
        .distinct("k", doc! { "k": { "$gte": 495, "$lt": 505 } })
        .await?;
    let keys: BTreeSet<i32> = keys.iter().filter_map(Bson::as_i32).collect();
    assert_eq!(keys, (495..505).collect::<BTreeSet<i32>>());
    Ok(())
}

/// An unsharded collection lives on its database's primary shard only.
async fn unsharded_on_primary(
    cluster: &TestCluster,
    router: &Client,
    db: &str,
    coll: &str,
) -> anyhow::Result<()> {
    let docs: Vec<Document> = (0..100).map(|i| doc! { "i": i }).collect();
    router
        .database(db)
        .collection::<Document>(coll)
        .insert_many(docs)
        .await?;
    let primary = shard_index(&primary_shard(router, db).await?)?;
    for i in 0..cluster.shard_count() {
        let count = shard_count(cluster, Node::Shard(i), db, coll).await?;
        let expected = if i == primary { 100 } else { 0 };
        assert_eq!(
            count, expected,
            "{db}.{coll} on shard{i} (primary shard{primary})"
        );
    }
    Ok(())
}

async fn shard_count(
    cluster: &TestCluster,
    node: Node,
    db: &str,
    coll: &str,
) -> anyhow::Result<u64> {
    let client = cluster.member_client(node).await?;
    Ok(client
        .database(db)
        .collection::<Document>(coll)
        .count_documents(doc! {})
        .await?)
}
