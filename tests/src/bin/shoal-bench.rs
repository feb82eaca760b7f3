//! `shoal-bench`: the two figures. Insert throughput: 100,000 documents of about 1 KB
//! through the router with the Rust driver, `insert_many` unordered in batches of 1,000, into a
//! collection sharded on `{k: 1}` (uniformly random k in 0..1,000,000, split at 500,000, upper
//! chunk on the second shard). With `--up`: seconds from `shoal up` to its ready line over 3 runs.
//!
//! With `--index N`: N documents (issue 4 asks for 1,000,000) in a sharded collection, lookups by
//! a secondary field timed without and then with an index on it, and `explain` for both.
//!
//! Usage: `shoal-bench [--uri URI] [--docs N] [--batch N] [--up] [--index N] [--no-insert]`.
//! Without `--uri` it starts its own cluster (config server, 2 shards, router) from the binaries
//! next to it.

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
/// Router, then 3 config members, then 3 members per shard (`shoal up`'s default layout).
const UP_PORT_BLOCK: u16 = 1 + 3 * (1 + UP_SHARDS as u16);

#[derive(Debug)]
struct Options {
    uri: Option<String>,
    docs: usize,
    batch: usize,
    up: bool,
    index_docs: Option<usize>,
    insert: bool,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        uri: None,
        docs: DOCS_DEFAULT,
        batch: BATCH_DEFAULT,
        up: false,
        index_docs: None,
        insert: true,
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
            "--index" => options.index_docs = Some(value("--index")?.parse()?),
            "--no-insert" => options.insert = false,
            "--help" | "-h" => {
                println!(
                    "usage: shoal-bench [--uri URI] [--docs N] [--batch N] [--up] [--index N] [--no-insert]"
                );
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
            summary.extend(cluster_benchmarks(&client, &options).await?);
        }
        None => {
            let cluster = TestCluster::start(2).await?;
            let client = cluster.router_client().await?;
            let lines = cluster_benchmarks(&client, &options).await;
            drop(client);
            summary.extend(lines?);
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

async fn cluster_benchmarks(client: &Client, options: &Options) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    if options.insert {
        lines.push(insert_benchmark(client, options).await?);
    }
    if let Some(docs) = options.index_docs {
        lines.extend(index_benchmark(client, docs, options.batch).await?);
    }
    Ok(lines)
}

/// Lookups timed per access path: enough repetitions for the indexed path to be measurable.
const LOOKUPS_WITHOUT_INDEX: usize = 10;
const LOOKUPS_WITH_INDEX: usize = 1_000;

/// Loads `docs` documents with a unique secondary field `f` into a sharded collection, then
/// times `find_one({f})` without and with an index on `f`, and keeps both explains.
async fn index_benchmark(
    client: &Client,
    docs: usize,
    batch: usize,
) -> anyhow::Result<Vec<String>> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let db = format!("ixbench{stamp}");
    shard_and_split(client, &db, "lookup", "k", Bson::Int64(KEY_SPACE / 2)).await?;
    let coll: Collection<Document> = client.database(&db).collection("lookup");
    let mut rng = rand::rng();
    let load_started = Instant::now();
    for first in (0..docs).step_by(batch) {
        let size = batch.min(docs - first);
        let batch: Vec<Document> = (first..first + size)
            .map(|seq| doc! {"k": rng.random_range(0..KEY_SPACE), "f": format!("user-{seq}"), "v": (seq % 100) as i32})
            .collect();
        coll.insert_many(batch).ordered(false).await?;
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    let probe = |rng: &mut rand::rngs::ThreadRng| format!("user-{}", rng.random_range(0..docs));
    let without = time_lookups(&coll, LOOKUPS_WITHOUT_INDEX, || probe(&mut rand::rng())).await?;
    let explain_without = explain_lookup(client, &db, &probe(&mut rng)).await?;
    let build_started = Instant::now();
    coll.create_index(mongodb::IndexModel::builder().keys(doc! {"f": 1}).build())
        .await?;
    let build_seconds = build_started.elapsed().as_secs_f64();
    let with = time_lookups(&coll, LOOKUPS_WITH_INDEX, || probe(&mut rand::rng())).await?;
    let explain_with = explain_lookup(client, &db, &probe(&mut rng)).await?;
    let ratio = without.as_secs_f64() / with.as_secs_f64().max(f64::MIN_POSITIVE);
    Ok(vec![
        format!(
            "index: loaded {docs} documents in {load_seconds:.1} s; index on f built in {build_seconds:.1} s"
        ),
        format!(
            "index: find_one({{f}}) without index {:.1} ms, with index {:.3} ms: {ratio:.0}x faster",
            without.as_secs_f64() * 1e3,
            with.as_secs_f64() * 1e3
        ),
        format!("explain without index: {explain_without}"),
        format!("explain with index: {explain_with}"),
    ])
}

/// The mean time of `count` lookups of random existing values; each must find its document.
async fn time_lookups(
    coll: &Collection<Document>,
    count: usize,
    mut probe: impl FnMut() -> String,
) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for _ in 0..count {
        let value = probe();
        let started = Instant::now();
        let found = coll.find_one(doc! {"f": &value}).await?;
        total += started.elapsed();
        anyhow::ensure!(found.is_some(), "lookup of {value} found nothing");
    }
    Ok(total / u32::try_from(count.max(1)).unwrap_or(u32::MAX))
}

/// The plan summary of `find({f: value})`: stage per shard and keys/documents examined.
async fn explain_lookup(client: &Client, db: &str, value: &str) -> anyhow::Result<String> {
    let reply = client
        .database(db)
        .run_command(doc! {"explain": {"find": "lookup", "filter": {"f": value}}, "verbosity": "executionStats"})
        .await?;
    let stats = reply.get_document("executionStats")?;
    let shards = reply
        .get_document("queryPlanner")?
        .get_document("winningPlan")?
        .get_array("shards")?;
    let plans: Vec<String> = shards
        .iter()
        .filter_map(Bson::as_document)
        .map(|plan| {
            let winning = plan
                .get_document("winningPlan")
                .cloned()
                .unwrap_or_default();
            let input = winning
                .get_document("inputStage")
                .ok()
                .and_then(|s| s.get_str("stage").ok())
                .unwrap_or("");
            format!(
                "{}: {} {}",
                plan.get_str("shardName").unwrap_or("?"),
                winning.get_str("stage").unwrap_or("?"),
                input
            )
        })
        .collect();
    Ok(format!(
        "[{}] nReturned {} totalKeysExamined {} totalDocsExamined {}",
        plans.join(", "),
        stats.get("nReturned").cloned().unwrap_or(Bson::Null),
        stats
            .get("totalKeysExamined")
            .cloned()
            .unwrap_or(Bson::Null),
        stats
            .get("totalDocsExamined")
            .cloned()
            .unwrap_or(Bson::Null),
    ))
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
        let ports = shoal_tests::up::up_ports(base, UP_SHARDS, shoal_tests::up::MEMBERS_DEFAULT)?;
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
