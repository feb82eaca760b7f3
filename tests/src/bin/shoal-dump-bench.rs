//! `shoal-dump-bench`: logical backup throughput. Loads `--docs N` documents of about 1 KB
//! (default 100,000) into a collection sharded over 2 shards, then times `shoal dump` of it and
//! `shoal restore` into a second, empty cluster, and prints MB/s (of dumped BSON bytes) for each.
//!
//! Usage: `shoal-dump-bench [--docs N]`.

use std::time::Instant;

use bson::{Document, doc};
use shoal_tests::{TestCluster, bin_path, sharding::shard_split_move};

const BATCH_DOCS: usize = 1_000;

fn docs_option() -> anyhow::Result<i64> {
    let mut args = std::env::args().skip(1);
    let mut docs = 100_000;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--docs" => {
                docs = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--docs needs a value"))?
                    .parse()?;
            }
            other => anyhow::bail!("unknown argument {other} (usage: shoal-dump-bench [--docs N])"),
        }
    }
    Ok(docs)
}

fn run_shoal(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(bin_path("shoal")?)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "shoal {args:?} failed: {status}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let docs = docs_option()?;
    let source = TestCluster::start(2).await?;
    let client = source.router_client().await?;
    client
        .database("admin")
        .run_command(doc! {"enableSharding": "bench"})
        .await?;
    shard_split_move(&client, "bench", "c", "k", bson::Bson::Int64(docs / 2)).await?;
    let coll = client.database("bench").collection::<Document>("c");
    let pad = "d".repeat(960);
    let mut k = 0;
    while k < docs {
        let batch: Vec<Document> = (k..(k + BATCH_DOCS as i64).min(docs))
            .map(|i| doc! {"k": i, "pad": pad.clone()})
            .collect();
        k += batch.len() as i64;
        coll.insert_many(batch).await?;
    }
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("dump");
    let out_str = out.display().to_string();
    let started = Instant::now();
    run_shoal(&[
        "dump",
        &source.router_uri(),
        "--out",
        &out_str,
        "--db",
        "bench",
    ])?;
    let dump_secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(out.join("bench").join("c.bson"))?.len() as f64;
    let target = TestCluster::start(2).await?;
    let started = Instant::now();
    run_shoal(&["restore", &target.router_uri(), &out_str])?;
    let restore_secs = started.elapsed().as_secs_f64();
    let restored = target
        .router_client()
        .await?
        .database("bench")
        .collection::<Document>("c")
        .count_documents(doc! {})
        .await?;
    anyhow::ensure!(
        restored == docs as u64,
        "restored {restored} of {docs} documents"
    );
    let mb = bytes / 1e6;
    println!(
        "dump: {docs} documents, {mb:.1} MB in {dump_secs:.2} s = {:.1} MB/s",
        mb / dump_secs
    );
    println!(
        "restore: {docs} documents, {mb:.1} MB in {restore_secs:.2} s = {:.1} MB/s",
        mb / restore_secs
    );
    source.finish();
    target.finish();
    Ok(())
}
