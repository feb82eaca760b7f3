//! `shoal-shard-bench`: issue 5's figures, on a cluster it starts itself (config server and
//! shards as one-member replica sets, and a router, all on loopback).
//!
//! - `--migrate MB` (default 64): a chunk of that many MB of 1 KB documents moved with
//!   `moveChunk` between two shards, `--trials` times (back and forth); MB/s per trial.
//! - `--targeted N` (default 5,000): N `find_one` calls by shard key (one shard) against N by an
//!   indexed non-key field (every shard), 4 concurrent clients each; the throughput ratio.
//! - `--balance DOCS` (default 0 = skip): DOCS documents of 1 KB in a hashed and a ranged
//!   collection on one shard, two shards added, seconds until the balancer has every shard
//!   within 10% of the mean data size.
//!
//! Usage: `shoal-shard-bench [--migrate MB] [--trials N] [--targeted N] [--balance DOCS]`.

use std::time::{Duration, Instant};

use bson::{Document, doc};
use mongodb::{Client, Collection};
use shoal_tests::{
    Node, TestCluster,
    sharding::{admin, other_shard, primary_shard},
};

const PAYLOAD_BYTES: usize = 1_000;
const INSERT_BATCH: usize = 1_000;
const CLIENTS: usize = 4;
/// How long the balancer may take before the benchmark gives up.
const BALANCE_WAIT: Duration = Duration::from_secs(1_800);

struct Options {
    migrate_mb: usize,
    trials: usize,
    targeted: usize,
    balance_docs: usize,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        migrate_mb: 64,
        trials: 3,
        targeted: 5_000,
        balance_docs: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> anyhow::Result<usize> {
            Ok(args
                .next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?
                .parse()?)
        };
        match arg.as_str() {
            "--migrate" => options.migrate_mb = value("--migrate")?,
            "--trials" => options.trials = value("--trials")?,
            "--targeted" => options.targeted = value("--targeted")?,
            "--balance" => options.balance_docs = value("--balance")?,
            "--help" | "-h" => {
                println!(
                    "usage: shoal-shard-bench [--migrate MB] [--trials N] [--targeted N] [--balance DOCS]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other} (try --help)"),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let mut summary = Vec::new();
    {
        let cluster = TestCluster::start(2).await?;
        let client = cluster.router_client().await?;
        // These figures are about one migration and about routing: no balancer moving chunks
        // underneath.
        admin(&client, doc! {"balancerStop": 1}).await?;
        if options.migrate_mb > 0 {
            summary.extend(migration_benchmark(&client, &options).await?);
        }
        if options.targeted > 0 {
            summary.push(targeted_benchmark(&client, options.targeted).await?);
        }
        drop(client);
        cluster.finish();
    }
    if options.balance_docs > 0 {
        summary.push(balance_benchmark(options.balance_docs).await?);
    }
    println!("\n===== shoal-shard-bench summary =====");
    for line in &summary {
        println!("{line}");
    }
    Ok(())
}

fn payload() -> String {
    "x".repeat(PAYLOAD_BYTES)
}

async fn load(coll: &Collection<Document>, docs: usize) -> anyhow::Result<()> {
    let pad = payload();
    for first in (0..docs).step_by(INSERT_BATCH) {
        let batch: Vec<Document> = (first..docs.min(first + INSERT_BATCH))
            .map(|k| doc! {"_id": k as i64, "k": k as i64, "f": format!("f{k}"), "pad": &pad})
            .collect();
        coll.insert_many(batch).ordered(false).await?;
    }
    Ok(())
}

async fn migration_benchmark(client: &Client, options: &Options) -> anyhow::Result<Vec<String>> {
    let (db, ns) = ("migbench", "migbench.c");
    admin(client, doc! {"enableSharding": db}).await?;
    admin(client, doc! {"shardCollection": ns, "key": {"k": 1}}).await?;
    let docs = options.migrate_mb * (1 << 20) / (PAYLOAD_BYTES + 60);
    load(&client.database(db).collection("c"), docs).await?;
    let mut from = primary_shard(client, db).await?;
    let mut lines = Vec::new();
    for trial in 0..options.trials {
        let to = other_shard(client, &from).await?;
        let started = Instant::now();
        let reply = admin(client, doc! {"moveChunk": ns, "find": {"k": 0}, "to": &to}).await?;
        let seconds = started.elapsed().as_secs_f64();
        let bytes = reply.get_i64("bytes").unwrap_or(0) as f64;
        let line = format!(
            "migration trial {trial}: {docs} docs, {:.1} MB moved {from} -> {to} in {seconds:.2} s = {:.1} MB/s",
            bytes / 1e6,
            bytes / 1e6 / seconds
        );
        println!("{line}");
        lines.push(line);
        from = to;
    }
    Ok(lines)
}

/// `find_one` throughput of `filters` over `CLIENTS` concurrent clients.
async fn find_rate(coll: &Collection<Document>, filters: Vec<Document>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let n = filters.len();
    let mut tasks = Vec::new();
    for part in filters.chunks(n.div_ceil(CLIENTS)) {
        let coll = coll.clone();
        let part = part.to_vec();
        tasks.push(tokio::spawn(async move {
            for filter in part {
                anyhow::ensure!(coll.find_one(filter).await?.is_some(), "missing document");
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn targeted_benchmark(client: &Client, finds: usize) -> anyhow::Result<String> {
    let (db, ns) = ("tgtbench", "tgtbench.c");
    admin(client, doc! {"enableSharding": db}).await?;
    admin(client, doc! {"shardCollection": ns, "key": {"k": 1}}).await?;
    let docs = 20_000usize;
    let coll: Collection<Document> = client.database(db).collection("c");
    load(&coll, docs).await?;
    client
        .database(db)
        .run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"f": 1}, "name": "f_1"}]})
        .await?;
    let from = primary_shard(client, db).await?;
    let to = other_shard(client, &from).await?;
    admin(
        client,
        doc! {"moveRange": ns, "min": {"k": (docs / 2) as i64}, "toShard": &to},
    )
    .await?;
    let keys: Vec<i64> = (0..finds).map(|i| ((i * 7_919) % docs) as i64).collect();
    let targeted = find_rate(&coll, keys.iter().map(|k| doc! {"k": k}).collect()).await?;
    let scatter = find_rate(
        &coll,
        keys.iter().map(|k| doc! {"f": format!("f{k}")}).collect(),
    )
    .await?;
    let line = format!(
        "find by shard key {targeted:.0}/s vs scatter-gather by indexed field {scatter:.0}/s over 2 shards, {CLIENTS} clients: ratio {:.2}",
        targeted / scatter
    );
    println!("{line}");
    Ok(line)
}

/// Each shard's owned documents of `db.coll`, counted on the shard itself (which hides
/// orphans); the documents are all the same size, so counts stand for data sizes.
async fn shard_counts(cluster: &TestCluster, db: &str, coll: &str) -> anyhow::Result<Vec<u64>> {
    let mut counts = Vec::new();
    for i in 0..cluster.shard_count() {
        let client = cluster.member_client(Node::Shard(i)).await?;
        let coll: Collection<Document> = client.database(db).collection(coll);
        counts.push(coll.count_documents(doc! {}).await?);
    }
    Ok(counts)
}

async fn balance_benchmark(docs: usize) -> anyhow::Result<String> {
    let cluster = TestCluster::start_without_shards(3).await?;
    let client = cluster.router_client().await?;
    admin(
        &client,
        doc! {"addShard": cluster.shard_connection_string(0)},
    )
    .await?;
    admin(&client, doc! {"enableSharding": "balbench"}).await?;
    admin(
        &client,
        doc! {"shardCollection": "balbench.hashed", "key": {"k": "hashed"}},
    )
    .await?;
    admin(
        &client,
        doc! {"shardCollection": "balbench.ranged", "key": {"k": 1}},
    )
    .await?;
    let db = client.database("balbench");
    load(&db.collection("hashed"), docs).await?;
    load(&db.collection("ranged"), docs).await?;
    admin(&client, doc! {"balancerStart": 1}).await?;
    let started = Instant::now();
    for i in 1..3 {
        admin(
            &client,
            doc! {"addShard": cluster.shard_connection_string(i)},
        )
        .await?;
    }
    loop {
        let mut balanced = true;
        for coll in ["hashed", "ranged"] {
            let counts = shard_counts(&cluster, "balbench", coll).await?;
            let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
            balanced &= counts
                .iter()
                .all(|n| (*n as f64 - mean).abs() <= 0.1 * mean);
        }
        if balanced {
            break;
        }
        anyhow::ensure!(started.elapsed() < BALANCE_WAIT, "not balanced in time");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(client);
    cluster.finish();
    Ok(format!(
        "balancer spread {docs} x 1 KB documents in each of a hashed and a ranged collection from 1 to 3 shards in {seconds:.1} s"
    ))
}
