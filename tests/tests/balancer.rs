//! Issue 5's balancing acceptance: 200,000 documents of 1 KB in a hashed-key and in a ranged-key
//! collection on a one-shard cluster; two shards are added and the balancer brings every shard
//! within 10% of the mean. Throughout, 4 clients write and read: no acknowledged write is lost,
//! and no count or full scan misses or repeats a document.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::{Client, Collection};
use shoal_tests::{Node, TestCluster, sharding::admin};
use tokio::sync::Mutex;

const DB: &str = "bal";
const COLLS: [&str; 2] = ["hashed", "ranged"];
const DOCS: i64 = 200_000;
const PAYLOAD_BYTES: usize = 1_000;
const CLIENTS: i64 = 4;
/// How long the balancer may take to spread both collections.
const BALANCE_WAIT: Duration = Duration::from_secs(900);
/// How often a client checks a count and a full scan.
const CHECK_EVERY_OPS: u64 = 200;

/// What the clients have done to one collection.
#[derive(Default)]
struct Tally {
    /// Inserts started.
    attempted: AtomicU64,
    /// Inserts acknowledged.
    acked: AtomicU64,
    /// The acknowledged `_id`s.
    ids: Mutex<Vec<i64>>,
}

async fn load(coll: &Collection<Document>) -> anyhow::Result<()> {
    let pad = "x".repeat(PAYLOAD_BYTES);
    for first in (0..DOCS).step_by(2_000) {
        let batch: Vec<Document> = (first..DOCS.min(first + 2_000))
            .map(|k| doc! {"_id": k, "k": k, "pad": &pad})
            .collect();
        coll.insert_many(batch).ordered(false).await?;
    }
    Ok(())
}

/// Checks a count and (sometimes) a full scan against what was acknowledged before it started
/// and attempted by the time it ended.
async fn check_reads(coll: &Collection<Document>, tally: &Tally, scan: bool) -> anyhow::Result<()> {
    let low = DOCS as u64 + tally.acked.load(Ordering::SeqCst);
    let n = coll.count_documents(doc! {}).await?;
    let high = DOCS as u64 + tally.attempted.load(Ordering::SeqCst);
    anyhow::ensure!(low <= n && n <= high, "count {n} outside [{low}, {high}]");
    if !scan {
        return Ok(());
    }
    let low = DOCS as u64 + tally.acked.load(Ordering::SeqCst);
    let mut cursor = coll.find(doc! {}).projection(doc! {"_id": 1}).await?;
    let mut seen = HashSet::new();
    while let Some(document) = cursor.try_next().await? {
        let id = document
            .get("_id")
            .cloned()
            .unwrap_or(Bson::Null)
            .to_string();
        anyhow::ensure!(seen.insert(id.clone()), "full scan returned _id {id} twice");
    }
    let high = DOCS as u64 + tally.attempted.load(Ordering::SeqCst);
    let n = seen.len() as u64;
    anyhow::ensure!(
        low <= n && n <= high,
        "full scan saw {n} outside [{low}, {high}]"
    );
    Ok(())
}

async fn client_loop(
    router: Client,
    client: i64,
    tallies: Arc<[Tally; 2]>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let mut ops = 0u64;
    let mut errors = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let which = (ops % 2) as usize;
        let coll: Collection<Document> = router.database(DB).collection(COLLS[which]);
        let tally = &tallies[which];
        let id = 1_000_000_000 * (client + 1) + ops as i64;
        tally.attempted.fetch_add(1, Ordering::SeqCst);
        match coll
            .insert_one(doc! {"_id": id, "k": id % DOCS, "c": client})
            .await
        {
            Ok(_) => {
                tally.ids.lock().await.push(id);
                tally.acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => {
                errors += 1;
                println!("client {client}: insert {id} failed: {error}");
            }
        }
        let probe = (id * 7_919) % DOCS;
        let found = coll.find_one(doc! {"k": probe, "_id": probe}).await?;
        anyhow::ensure!(
            found.is_some(),
            "document {probe} not found in {}",
            COLLS[which]
        );
        ops += 1;
        if ops.is_multiple_of(CHECK_EVERY_OPS) {
            // One client scans in full; the others count.
            check_reads(&coll, tally, client == 0).await?;
        }
    }
    Ok(errors)
}

/// Each shard's owned documents of `coll`, counted on the shard itself (it hides orphans).
async fn shard_counts(cluster: &TestCluster, coll: &str) -> anyhow::Result<Vec<u64>> {
    let mut counts = Vec::new();
    for i in 0..cluster.shard_count() {
        let client = cluster.member_client(Node::Shard(i)).await?;
        let coll: Collection<Document> = client.database(DB).collection(coll);
        counts.push(coll.count_documents(doc! {}).await?);
    }
    Ok(counts)
}

fn within_tenth(counts: &[u64]) -> bool {
    let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    counts
        .iter()
        .all(|n| (*n as f64 - mean).abs() <= 0.1 * mean)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_balancer_spreads_two_collections_over_added_shards_under_load() -> anyhow::Result<()> {
    let cluster = TestCluster::start_without_shards(3).await?;
    let router = cluster.router_client().await?;
    admin(
        &router,
        doc! {"addShard": cluster.shard_connection_string(0)},
    )
    .await?;
    admin(&router, doc! {"enableSharding": DB}).await?;
    admin(
        &router,
        doc! {"shardCollection": "bal.hashed", "key": {"k": "hashed"}},
    )
    .await?;
    admin(
        &router,
        doc! {"shardCollection": "bal.ranged", "key": {"k": 1}},
    )
    .await?;
    for coll in COLLS {
        load(&router.database(DB).collection(coll)).await?;
    }
    admin(&router, doc! {"balancerStart": 1}).await?;

    let tallies = Arc::new([Tally::default(), Tally::default()]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        clients.push(tokio::spawn(client_loop(
            router.clone(),
            client,
            Arc::clone(&tallies),
            Arc::clone(&stop),
        )));
    }
    let started = Instant::now();
    for i in 1..3 {
        admin(
            &router,
            doc! {"addShard": cluster.shard_connection_string(i)},
        )
        .await?;
    }
    loop {
        let mut balanced = true;
        for coll in COLLS {
            let counts = shard_counts(&cluster, coll).await?;
            balanced &= within_tenth(&counts);
            if started.elapsed().as_secs().is_multiple_of(10) {
                println!(
                    "{:>5.1} s {coll}: {counts:?}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if balanced {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < BALANCE_WAIT,
            "not balanced within {BALANCE_WAIT:?}"
        );
        if let Some(done) = clients.iter().position(|task| task.is_finished()) {
            let outcome = clients.swap_remove(done).await?;
            anyhow::bail!("client stopped early: {outcome:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("balanced after {:.1} s", started.elapsed().as_secs_f64());
    stop.store(true, Ordering::SeqCst);
    let mut errors = 0;
    for client in clients {
        errors += client.await??;
    }
    println!("client write errors (unacknowledged, allowed): {errors}");

    for (which, coll) in COLLS.iter().enumerate() {
        let coll: Collection<Document> = router.database(DB).collection(coll);
        let tally = &tallies[which];
        let acked = tally.ids.lock().await.clone();
        let mut cursor = coll.find(doc! {}).projection(doc! {"_id": 1}).await?;
        let mut seen = HashSet::new();
        while let Some(document) = cursor.try_next().await? {
            let id = document
                .get_i64("_id")
                .or(document.get_i32("_id").map(i64::from))?;
            anyhow::ensure!(seen.insert(id), "_id {id} twice");
        }
        for id in 0..DOCS {
            anyhow::ensure!(seen.contains(&id), "loaded document {id} lost");
        }
        for id in &acked {
            anyhow::ensure!(seen.contains(id), "acknowledged insert {id} lost");
        }
        let counts = shard_counts(&cluster, coll.name()).await?;
        let on_shards: u64 = counts.iter().sum();
        anyhow::ensure!(
            on_shards == seen.len() as u64,
            "shards own {on_shards} documents, the router sees {}",
            seen.len()
        );
        println!(
            "{}: {} documents, per shard {counts:?}",
            coll.name(),
            seen.len()
        );
    }
    cluster.finish();
    Ok(())
}
