//! Crash safety of the config server's multi-step metadata operations. For each failpoint, the
//! config server is restarted with `SHOAL_FAILPOINTS` naming it, the operation is run through the
//! router and must fail because the config process aborted at that point; the config server is
//! then restarted without the variable, the same operation retried must succeed, and the chunk
//! map must still tile the key space with reads and writes working.

use std::{os::unix::process::ExitStatusExt, time::Duration};

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::{Client, Collection};
use shoal_tests::{
    Node, TestCluster,
    mongo::{error_code, is_ok},
    sharding::{admin, check_tiling, chunks_of, other_shard, primary_shard, shard_index},
};

const FAILPOINTS_ENV: &str = "SHOAL_FAILPOINTS";
const DB: &str = "fp";
const COLL: &str = "c";
const NS: &str = "fp.c";
const MIDDLE: i32 = 500;
const DOCS: i32 = 1_000;
/// How long the failing command may take to come back once the config server died.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Which step crashes, and what has to be in place before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    ShardCollection,
    Split,
    MoveChunk,
    Merge,
}

impl Step {
    fn failpoint(self) -> &'static str {
        match self {
            Step::ShardCollection => "shardCollection.afterEnsureDatabase",
            Step::Split => "split.beforeCommit",
            Step::MoveChunk => "moveChunk.beforeCommit",
            Step::Merge => "mergeChunks.beforeCommit",
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shard_collection_after_ensure_database() -> anyhow::Result<()> {
    crash_and_retry(Step::ShardCollection).await
}

#[tokio::test(flavor = "multi_thread")]
async fn split_before_commit() -> anyhow::Result<()> {
    crash_and_retry(Step::Split).await
}

#[tokio::test(flavor = "multi_thread")]
async fn move_chunk_before_commit() -> anyhow::Result<()> {
    crash_and_retry(Step::MoveChunk).await
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_chunks_before_commit() -> anyhow::Result<()> {
    crash_and_retry(Step::Merge).await
}

async fn crash_and_retry(step: Step) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(2).await?;
    let router = cluster.router_client().await?;
    let upper = prepare(&router, step).await?;
    let command = step_command(step, &upper);

    cluster
        .restart_with_env(Node::Config, &[(FAILPOINTS_ENV, step.failpoint())])
        .await?;
    // Reconnection after a config restart is tested in restarts.rs; here the step must reach
    // the armed config server.
    let waited = cluster.wait_router_reaches_config().await?;
    println!("router reached the restarted config server after {waited:?}");
    let attempt = tokio::time::timeout(
        COMMAND_TIMEOUT,
        router.database("admin").run_command(command.clone()),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "{command} did not return within {COMMAND_TIMEOUT:?} after the config server aborted"
        )
    })?;
    match attempt {
        Ok(reply) => assert!(
            !is_ok(&reply),
            "{command} succeeded through failpoint {}: {reply}",
            step.failpoint()
        ),
        Err(err) => println!(
            "{command} failed as expected: {err} (code {:?})",
            error_code(&err)
        ),
    }
    let status = cluster.wait_exit(Node::Config).await?;
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "config server exit at {}: {status}",
        step.failpoint()
    );

    cluster.restart(Node::Config).await?;
    let waited = cluster.wait_router_reaches_config().await?;
    println!("router reached the restarted config server after {waited:?}");
    admin(&router, command).await?;
    check_after(&cluster, &router, step, &upper).await?;

    drop(router);
    cluster.finish();
    Ok(())
}

/// Everything before the crashing step; returns the shard the upper chunk moves to.
async fn prepare(router: &Client, step: Step) -> anyhow::Result<String> {
    if step != Step::ShardCollection {
        admin(router, doc! { "enableSharding": DB }).await?;
        admin(router, doc! { "shardCollection": NS, "key": { "k": 1 } }).await?;
    }
    if matches!(step, Step::MoveChunk | Step::Merge) {
        admin(router, doc! { "split": NS, "middle": { "k": MIDDLE } }).await?;
    }
    // Before shardCollection the database may not exist yet; any shard is "other" then.
    let primary = match step {
        Step::ShardCollection => "shard0".to_owned(),
        _ => primary_shard(router, DB).await?,
    };
    other_shard(router, &primary).await
}

fn step_command(step: Step, upper: &str) -> Document {
    match step {
        // No enableSharding first: shardCollection itself creates the database (MongoDB 6+),
        // which is the step the failpoint follows.
        Step::ShardCollection => doc! { "shardCollection": NS, "key": { "k": 1 } },
        Step::Split => doc! { "split": NS, "middle": { "k": MIDDLE } },
        Step::MoveChunk => doc! { "moveChunk": NS, "find": { "k": MIDDLE }, "to": upper },
        Step::Merge => doc! {
            "mergeChunks": NS, "bounds": [{ "k": Bson::MinKey }, { "k": Bson::MaxKey }],
        },
    }
}

async fn check_after(
    cluster: &TestCluster,
    router: &Client,
    step: Step,
    upper: &str,
) -> anyhow::Result<()> {
    let chunks = check_tiling(&chunks_of(router, NS).await?, "k")?;
    let primary = primary_shard(router, DB).await?;
    // Before shardCollection, `prepare` could not know the primary; pick the non-primary now.
    let upper = match step {
        Step::ShardCollection => other_shard(router, &primary).await?,
        _ => upper.to_owned(),
    };
    let upper = upper.as_str();
    let expected_chunks = if matches!(step, Step::ShardCollection | Step::Merge) {
        1
    } else {
        2
    };
    assert_eq!(chunks.len(), expected_chunks, "{chunks:?}");
    assert_eq!(chunks[0].get_str("shard")?, primary, "{chunks:?}");
    if step == Step::Split {
        assert_eq!(chunks[1].get_str("shard")?, primary, "{chunks:?}");
    }
    if step == Step::MoveChunk {
        assert_eq!(chunks[1].get_str("shard")?, upper, "{chunks:?}");
    }
    // The collection is registered once, with its key.
    let entries: Vec<Document> = router
        .database("config")
        .collection::<Document>("collections")
        .find(doc! { "_id": NS })
        .await?
        .try_collect()
        .await?;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].get_document("key")?, &doc! { "k": 1 });

    let coll: Collection<Document> = router.database(DB).collection(COLL);
    let docs: Vec<Document> = (0..DOCS).map(|k| doc! { "k": k }).collect();
    coll.insert_many(docs).await?;
    assert_eq!(coll.count_documents(doc! {}).await?, DOCS as u64);
    let last = coll.find_one(doc! {}).sort(doc! { "k": -1 }).await?;
    assert_eq!(
        last.and_then(|d| d.get("k").cloned()),
        Some(Bson::Int32(DOCS - 1))
    );
    let upper_count = if step == Step::MoveChunk {
        (DOCS - MIDDLE) as u64
    } else {
        0
    };
    let upper_client = cluster
        .member_client(Node::Shard(shard_index(upper)?))
        .await?;
    let on_upper = upper_client
        .database(DB)
        .collection::<Document>(COLL)
        .count_documents(doc! {})
        .await?;
    assert_eq!(on_upper, upper_count, "documents on {upper}");
    Ok(())
}
