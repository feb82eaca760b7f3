//! `shoal-backup-bench`: physical backup and point-in-time restore figures. Loads `--mb N`
//! megabytes (default 1024) of 1 KB incompressible documents into a collection sharded over 2
//! shards (balancer stopped, `shoal backup archive` running), then times `shoal backup create`,
//! `verify`, `verify --restore` and `restore` (MB/s of the files referenced), and a restore to a
//! point in time after more writes: the restore command, and until the new cluster serves the
//! collection.
//!
//! Usage: `shoal-backup-bench [--mb N]`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::{Binary, Bson, Document, doc};
use mongodb::Client;
use shoal_tests::{
    TestCluster, bin_path,
    cli::{path_str, restore_to_time_args, shoal, shoal_ok, wait_archive_past},
    cluster::{CONFIG_REPLSET, shard_name},
    ports::free_port,
    process::Process,
    sharding::shard_and_split,
};

const BATCH_DOCS: usize = 1_000;
const LOADERS: u64 = 4;
const PAYLOAD_BYTES: usize = 1_000;
const KEY_VALUES: i64 = 1_000_000;
/// How long the archive may take to pass the restore time.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(300);

fn mb_option() -> anyhow::Result<u64> {
    let mut args = std::env::args().skip(1);
    let mut mb = 1024;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mb" => {
                mb = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--mb needs a value"))?
                    .parse()?;
            }
            other => anyhow::bail!("unknown argument {other} (usage: shoal-backup-bench [--mb N])"),
        }
    }
    Ok(mb)
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn payload(seed: u64) -> Binary {
    shoal_tests::incompressible(seed, PAYLOAD_BYTES)
}

/// Inserts documents `range` (step `LOADERS`, starting at `first`) in batches.
async fn load(client: Client, first: u64, count: u64) -> anyhow::Result<()> {
    let coll = client.database("bench").collection::<Document>("items");
    let mut batch = Vec::with_capacity(BATCH_DOCS);
    for n in 0..count {
        let id = first + n * LOADERS;
        let k = i64::try_from(id)? % KEY_VALUES;
        batch.push(doc! {"_id": i64::try_from(id)?, "k": k, "p": payload(id)});
        if batch.len() == BATCH_DOCS {
            coll.insert_many(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        coll.insert_many(batch).await?;
    }
    Ok(())
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

fn referenced_bytes(store: &std::path::Path, id: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(store.join("backups").join(id).join("manifest.json"))?;
    let manifest: serde_json::Value = serde_json::from_str(&text)?;
    manifest["bytesReferenced"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("manifest without bytesReferenced"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mb = mb_option()?;
    let docs = mb * 1_000_000 / (PAYLOAD_BYTES as u64 + 40);
    let cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    client
        .database("admin")
        .run_command(doc! {"balancerStop": 1})
        .await?;
    shard_and_split(&client, "bench", "items", "k", Bson::Int64(KEY_VALUES / 2)).await?;
    let work = tempfile::Builder::new()
        .prefix("shoal-backup-bench-")
        .tempdir()?;
    let store = work.path().join("store");
    let store_str = path_str(&store)?.to_owned();
    let uri = cluster.router_uri();
    let mut archiver = Process::new(
        "archiver",
        bin_path("shoal")?,
        [
            "backup",
            "archive",
            "--uri",
            &uri,
            "--store",
            &store_str,
            "--interval-ms",
            "500",
        ]
        .map(str::to_owned)
        .to_vec(),
        work.path().join("archiver.log"),
    );
    archiver.start(&[])?;

    let started = Instant::now();
    let loaders: Vec<_> = (0..LOADERS)
        .map(|first| tokio::spawn(load(client.clone(), first, docs / LOADERS)))
        .collect();
    for loader in loaders {
        loader.await??;
    }
    let loaded = started.elapsed();
    println!(
        "loaded {} documents ({mb} MB of payload) in {:.1}s",
        docs / LOADERS * LOADERS,
        loaded.as_secs_f64()
    );

    let started = Instant::now();
    let id = shoal_ok(&["backup", "create", "--uri", &uri, "--store", &store_str]).await?;
    let id = id.trim().to_owned();
    let took = started.elapsed();
    let bytes = referenced_bytes(&store, &id)?;
    println!(
        "backup create: {:.1} MB in {:.2}s = {:.0} MB/s",
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        mb_per_s(bytes, took)
    );

    let started = Instant::now();
    shoal_ok(&["backup", "verify", "--store", &store_str, "--backup", &id]).await?;
    let took = started.elapsed();
    println!(
        "backup verify: {:.2}s = {:.0} MB/s",
        took.as_secs_f64(),
        mb_per_s(bytes, took)
    );

    let started = Instant::now();
    let checked = shoal(&[
        "backup",
        "verify",
        "--store",
        &store_str,
        "--backup",
        &id,
        "--restore",
    ])
    .await?;
    let took = started.elapsed();
    if checked.status.success() {
        println!(
            "backup verify --restore: {:.2}s = {:.0} MB/s (verify, restore, start a scratch \
             cluster, checksum every document)",
            took.as_secs_f64(),
            mb_per_s(bytes, took)
        );
    } else {
        let stderr = String::from_utf8_lossy(&checked.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        println!(
            "backup verify --restore FAILED after {:.1}s: {}",
            took.as_secs_f64(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }

    let out = work.path().join("plain");
    let started = Instant::now();
    shoal_ok(&[
        "backup",
        "restore",
        "--store",
        &store_str,
        "--backup",
        &id,
        "--out",
        path_str(&out)?,
    ])
    .await?;
    let took = started.elapsed();
    println!(
        "backup restore: {:.2}s = {:.0} MB/s",
        took.as_secs_f64(),
        mb_per_s(bytes, took)
    );

    // More writes after the backup (10% of the data), then a restore to a time after them.
    let started = Instant::now();
    let extra = docs / 10;
    load(client.clone(), docs + 1, extra / LOADERS * LOADERS).await?;
    let wrote = started.elapsed();
    let time = now_millis();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let sets = [CONFIG_REPLSET.to_owned(), shard_name(0), shard_name(1)];
    wait_archive_past(&store, &sets, time, ARCHIVE_TIMEOUT).await?;
    archiver.kill();
    println!(
        "wrote {extra} more documents in {:.1}s; archive complete past T",
        wrote.as_secs_f64()
    );
    let config_port = free_port()?;
    let shard_ports = vec![free_port()?, free_port()?];
    let pitr = work.path().join("pitr");
    let hosts = [
        (CONFIG_REPLSET.to_owned(), config_port),
        (shard_name(0), shard_ports[0]),
        (shard_name(1), shard_ports[1]),
    ];
    let owned_args = restore_to_time_args(&store, &pitr, time, &hosts)?;
    let args: Vec<&str> = owned_args.iter().map(String::as_str).collect();
    let started = Instant::now();
    shoal_ok(&args).await?;
    let restore_took = started.elapsed();
    let restored = TestCluster::start_restored(&pitr, config_port, shard_ports).await?;
    let restored_client = restored.router_client().await?;
    let count = restored_client
        .database("bench")
        .collection::<Document>("items")
        .count_documents(doc! {})
        .await?;
    let ready = started.elapsed();
    println!(
        "restore to a point in time ({extra} documents replayed from the archive): restore {:.2}s, \
         new cluster serving {count} documents after {:.2}s",
        restore_took.as_secs_f64(),
        ready.as_secs_f64()
    );
    restored.finish();
    cluster.finish();
    Ok(())
}
