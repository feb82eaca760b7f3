//! `shoal-bench`: the two figures. Insert throughput: 100,000 documents of about 1 KB
//! through the router with the Rust driver, `insert_many` unordered in batches of 1,000, into a
//! collection sharded on `{k: 1}` (uniformly random k in 0..1,000,000, split at 500,000, upper
//! chunk on the second shard). With `--up`: seconds from `shoal up` to its ready line over 3 runs.
//!
//! Usage: `shoal-bench [--uri URI] [--docs N] [--batch N] [--up]`. Without `--uri` it starts its
//! own cluster (config server, 2 shards, router) from the binaries next to it.

use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use mongodb::{Client, Collection};
use rand::Rng;
use shoal_tests::{TestCluster, ports::free_port_block, sharding::shard_and_split, up::ShoalUp};

const DOCS_DEFAULT: usize = 100_000;
const BATCH_DEFAULT: usize = 1_000;
const KEY_SPACE: i64 = 1_000_000;
const PAYLOAD_BYTES: usize = 960;
const UP_RUNS: usize = 3;
const UP_SHARDS: usize = 2;
const UP_PORT_BLOCK: u16 = 5;

#[derive(Debug)]
struct Options {
    uri: Option<String>,
    docs: usize,
    batch: usize,
    up: bool,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        uri: None,
        docs: DOCS_DEFAULT,
        batch: BATCH_DEFAULT,
        up: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        match arg.as_str() {
            "--uri" => options.uri = Some(value("--uri")?),
            "--docs" => options.docs = value("--docs")?.parse()?,
            "--batch" => options.batch = value("--batch")?.parse()?,
            "--up" => options.up = true,
            "--help" | "-h" => {
                println!("usage: shoal-bench [--uri URI] [--docs N] [--batch N] [--up]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other} (try --help)"),
        }
    }
    anyhow::ensure!(options.batch > 0, "--batch must be positive");
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let mut summary = Vec::new();
    match &options.uri {
        Some(uri) => {
            let client = Client::with_uri_str(uri).await?;
            summary.push(insert_benchmark(&client, &options).await?);
        }
        None => {
            let cluster = TestCluster::start(2).await?;
            let client = cluster.router_client().await?;
            let line = insert_benchmark(&client, &options).await;
            drop(client);
            summary.push(line?);
            cluster.finish();
        }
    }
    if options.up {
        summary.extend(up_benchmark().await?);
    }
    println!("\n===== shoal-bench summary =====");
    for line in &summary {
        println!("{line}");
    }
    Ok(())
}

fn make_batch(rng: &mut impl Rng, first_seq: usize, size: usize, payload: &str) -> Vec<Document> {
    (first_seq..first_seq + size)
        .map(|seq| {
            doc! {
                "k": rng.random_range(0..KEY_SPACE),
                "seq": i64::try_from(seq).unwrap_or(i64::MAX),
                "payload": payload,
            }
        })
        .collect()
}

async fn insert_benchmark(client: &Client, options: &Options) -> anyhow::Result<String> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let db = format!("bench{stamp}");
    let placement = shard_and_split(client, &db, "docs", "k", Bson::Int64(KEY_SPACE / 2)).await?;
    println!(
        "bench: {db}.docs sharded on k, [MinKey, 500000) on {}, [500000, MaxKey) on {}",
        placement.lower, placement.upper
    );
    let coll: Collection<Document> = client.database(&db).collection("docs");
    let payload: String = (0..PAYLOAD_BYTES)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut rng = rand::rng();
    let mut bytes = 0_usize;
    let mut elapsed = Duration::ZERO;
    for first in (0..options.docs).step_by(options.batch) {
        let size = options.batch.min(options.docs - first);
        let batch = make_batch(&mut rng, first, size, &payload);
        for document in &batch {
            let mut encoded = Vec::new();
            document.to_writer(&mut encoded)?;
            bytes += encoded.len();
        }
        // Only the inserts are timed, not building the documents.
        let started = Instant::now();
        coll.insert_many(batch).ordered(false).await?;
        elapsed += started.elapsed();
    }
    let count = coll.count_documents(doc! {}).await?;
    anyhow::ensure!(
        count == options.docs as u64,
        "inserted {} documents but {count} are there",
        options.docs
    );
    let seconds = elapsed.as_secs_f64();
    let docs_per_second = options.docs as f64 / seconds;
    let megabytes_per_second = bytes as f64 / seconds / 1e6;
    let average = bytes / options.docs.max(1);
    Ok(format!(
        "inserts: {} documents of ~{average} bytes in batches of {} (insert_many, ordered: false) through the router into a 2-shard collection: {seconds:.2} s, {docs_per_second:.0} documents/s, {megabytes_per_second:.2} MB/s",
        options.docs, options.batch
    ))
}

async fn up_benchmark() -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut times = Vec::new();
    for run in 1..=UP_RUNS {
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-up-")
            .tempdir()?;
        let base = free_port_block(UP_PORT_BLOCK)?;
        let ports: Vec<u16> = (base..base + 2 + UP_SHARDS as u16).collect();
        let log = dir.path().join("shoal-up.log");
        let up = ShoalUp::start(&dir.path().join("cluster"), base, UP_SHARDS, &log).await?;
        let seconds = up.ready_after.as_secs_f64();
        times.push(seconds);
        lines.push(format!(
            "shoal up run {run} (fresh dir, {UP_SHARDS} shards): ready after {seconds:.2} s"
        ));
        up.terminate(&ports).await?;
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    lines.push(format!(
        "shoal up time to ready: mean {mean:.2} s, best {best:.2} s over {UP_RUNS} runs"
    ));
    Ok(lines)
}
