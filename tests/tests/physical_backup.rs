//! `shoal backup` end to end on a two-shard cluster while a writer runs: two backups (the second
//! incremental: it copies fewer bytes), `list` shows both, `verify` passes; a restored shard
//! directory swapped in for the shard's data brings the shard back with every document it held
//! at the backup; then one object corrupted (a flipped byte) and one truncated make `verify`
//! fail naming both files, and `restore` refuse without creating anything in `--out`.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bson::{Bson, Document, doc};
use mongodb::Client;
use serde_json::Value;
use shoal_tests::{
    Node, POLL_INTERVAL, READY_TIMEOUT, TestCluster,
    cli::{event_writer, path_str, read_manifest, shoal, shoal_ok},
    cluster::shard_name,
    sharding::{admin, shard_and_split, shard_index},
};

/// Documents of the sharded collection loaded before the first backup.
const ITEMS_FIRST: i32 = 20_000;
/// Documents added between the two backups.
const ITEMS_SECOND: i32 = 2_000;
/// Shard key values run over 0..KEY_VALUES; the collection is split at KEY_VALUES / 2.
const KEY_VALUES: i32 = 1000;
/// Bytes of incompressible payload per document.
const PAYLOAD_BYTES: usize = 400;
/// Documents per `insert_many` while loading.
const LOAD_BATCH_DOCS: usize = 1000;
/// Documents per insert of the background writer.
const WRITER_BATCH_DOCS: u64 = 50;
/// The most batches the writer sends (a bound; it is normally stopped long before).
const WRITER_BATCHES_MAX: u64 = 100_000;
/// How long the whole test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(900);

/// A document of `app.items`: the payload is pseudo-random so that it does not compress.
fn item(i: i32) -> Document {
    let payload = shoal_tests::incompressible(u64::try_from(i).unwrap_or(0), PAYLOAD_BYTES);
    doc! {
        "_id": i,
        "k": i % KEY_VALUES,
        "payload": payload,
    }
}

async fn load_items(client: &Client, range: std::ops::Range<i32>) -> anyhow::Result<()> {
    let items = client.database("app").collection::<Document>("items");
    let all: Vec<Document> = range.map(item).collect();
    for batch in all.chunks(LOAD_BATCH_DOCS) {
        items.insert_many(batch).await?;
    }
    Ok(())
}

/// Inserts batches into `app.events` until `stop`; `acked` counts acknowledged documents.
fn u64_field(value: &Value, key: &str) -> anyhow::Result<u64> {
    value[key]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("{key} missing in {value}"))
}

/// Checks a manifest's shape: the config set and both shards, each with files and a position.
fn check_manifest(manifest: &Value) -> anyhow::Result<()> {
    let sets = manifest["sets"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no sets in {manifest}"))?;
    let names: Vec<(&str, &str)> = sets
        .iter()
        .map(|set| {
            (
                set["name"].as_str().unwrap_or("?"),
                set["role"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("configRS", "config"),
            ("shard0", "shard"),
            ("shard1", "shard")
        ]
    );
    for set in sets {
        assert!(u64_field(set, "appliedIndex")? > 0, "{set}");
        let files = set["files"].as_array().map_or(0, Vec::len);
        assert!(files > 0, "{set}");
    }
    Ok(())
}

/// The two largest distinct objects of shard sets in `manifest`: (manifest path, object).
fn two_large_objects(manifest: &Value) -> anyhow::Result<Vec<(String, String)>> {
    let mut files: Vec<(u64, String, String)> = Vec::new();
    for set in manifest["sets"].as_array().into_iter().flatten() {
        for file in set["files"].as_array().into_iter().flatten() {
            files.push((
                u64_field(file, "size")?,
                file["path"].as_str().unwrap_or_default().to_owned(),
                file["object"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    files.sort_by_key(|file| std::cmp::Reverse(file.0));
    files.dedup_by(|a, b| a.2 == b.2);
    anyhow::ensure!(files.len() >= 2, "too few files: {files:?}");
    anyhow::ensure!(files[1].0 > 1000, "objects too small: {files:?}");
    Ok(files
        .into_iter()
        .take(2)
        .map(|(_, path, object)| (path, object))
        .collect())
}

/// `count` of `app.<coll>` through the router, retried while the restarted shard comes up.
async fn count_eventually(client: &Client, coll: &str) -> anyhow::Result<u64> {
    let started = Instant::now();
    loop {
        let attempt = client
            .database("app")
            .collection::<Document>(coll)
            .count_documents(doc! {})
            .await;
        match attempt {
            Ok(count) => return Ok(count),
            Err(error) if started.elapsed() >= READY_TIMEOUT => {
                anyhow::bail!("counting app.{coll} kept failing: {error}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Replaces shard `index`'s data directory with the restored one and restarts it.
async fn swap_in_restored(
    cluster: &mut TestCluster,
    index: usize,
    restored: &Path,
) -> anyhow::Result<()> {
    let node = Node::Shard(index);
    cluster.kill(node);
    let data = cluster.dir().join("data").join(shard_name(index));
    std::fs::rename(&data, data.with_extension("before-restore"))?;
    std::fs::rename(restored, &data)?;
    cluster.restart(node).await
}

async fn scenario() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    admin(&client, doc! {"balancerStop": 1}).await?;
    let placement =
        shard_and_split(&client, "app", "items", "k", Bson::Int32(KEY_VALUES / 2)).await?;
    load_items(&client, 0..ITEMS_FIRST).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer_task = tokio::spawn(event_writer(
        client.clone(),
        WRITER_BATCH_DOCS,
        WRITER_BATCHES_MAX,
        Arc::clone(&stop),
        Arc::clone(&acked),
    ));
    let work = tempfile::Builder::new()
        .prefix("shoal-physical-")
        .tempdir()?;
    let store = work.path().join("store");
    let uri = cluster.router_uri();
    let store_arg = path_str(&store)?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The first backup's checkpoints go to a directory shared with the members (as across
    // machines); the command removes them once stored.
    let shared = work.path().join("checkpoints");
    let first = shoal_ok(&[
        "backup",
        "create",
        "--uri",
        &uri,
        "--store",
        store_arg,
        "--checkpoint-dir",
        path_str(&shared)?,
    ])
    .await?;
    let first = first.trim().to_owned();
    let left = std::fs::read_dir(shared.join(&first))?.count();
    assert_eq!(left, 0, "checkpoints left in {}", shared.display());
    load_items(&client, ITEMS_FIRST..ITEMS_FIRST + ITEMS_SECOND).await?;
    let events_before = acked.load(Ordering::Relaxed);
    let second = shoal_ok(&["backup", "create", "--uri", &uri, "--store", store_arg]).await?;
    let second = second.trim().to_owned();
    let events_after = acked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer_task.await??;
    assert!(
        events_before > 0,
        "the writer wrote nothing before the backup"
    );

    let (manifest1, manifest2) = (
        read_manifest(&store, &first)?,
        read_manifest(&store, &second)?,
    );
    check_manifest(&manifest1)?;
    check_manifest(&manifest2)?;
    let copied1 = u64_field(&manifest1, "bytesCopied")?;
    let copied2 = u64_field(&manifest2, "bytesCopied")?;
    let referenced2 = u64_field(&manifest2, "bytesReferenced")?;
    let loaded = u64::try_from(ITEMS_FIRST)? * PAYLOAD_BYTES as u64;
    assert!(copied1 > loaded, "first backup copied {copied1} bytes");
    assert!(
        copied2 < copied1 / 2,
        "incremental copied {copied2} of {copied1}"
    );
    assert!(
        referenced2 > copied1,
        "second backup references {referenced2}"
    );

    let listing = shoal_ok(&["backup", "list", "--store", store_arg]).await?;
    assert!(
        listing.contains(&first) && listing.contains(&second),
        "{listing}"
    );
    let verified = shoal_ok(&["backup", "verify", "--store", store_arg]).await?;
    assert!(verified.contains("verified 2 backups"), "{verified}");
    assert!(verified.trim_end().ends_with(": ok"), "{verified}");

    // A healthy restore, swapped in for the shard holding the writer's collection and the lower
    // half of items: it comes back with everything it held at the second backup.
    let restored = work.path().join("restored");
    let out = path_str(&restored)?;
    shoal_ok(&[
        "backup", "restore", "--store", store_arg, "--backup", &second, "--out", out,
    ])
    .await?;
    for set in ["configRS", "shard0", "shard1"] {
        assert!(
            restored.join(set).join("db").join("CURRENT").is_file(),
            "{set}"
        );
    }
    let index = shard_index(&placement.lower)?;
    swap_in_restored(&mut cluster, index, &restored.join(shard_name(index))).await?;
    let items = count_eventually(&client, "items").await?;
    assert_eq!(items, u64::try_from(ITEMS_FIRST + ITEMS_SECOND)?);
    let events = count_eventually(&client, "events").await?;
    assert!(
        events >= events_before,
        "{events} events, {events_before} acked before"
    );
    assert!(
        events <= events_after + WRITER_BATCH_DOCS,
        "{events} events"
    );

    damaged_store(&store, &second, &work.path().join("refused")).await?;
    cluster.finish();
    Ok(())
}

/// Flips a byte of one object and truncates another: verify names both, restore refuses.
async fn damaged_store(store: &Path, id: &str, out: &Path) -> anyhow::Result<()> {
    let manifest = read_manifest(store, id)?;
    let targets = two_large_objects(&manifest)?;
    let (flipped_path, flipped_object) = &targets[0];
    let (cut_path, cut_object) = &targets[1];
    let flipped = store.join(flipped_object);
    let mut bytes = std::fs::read(&flipped)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&flipped, bytes)?;
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(store.join(cut_object))?;
    let length = cut.metadata()?.len();
    cut.set_len(length / 2)?;
    drop(cut);

    let store_arg = path_str(store)?;
    let verify = shoal(&["backup", "verify", "--store", store_arg, "--backup", id]).await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        !verify.status.success(),
        "verify passed a damaged store: {said}"
    );
    for (path, object, damage) in [
        (flipped_path, flipped_object, "corrupted"),
        (cut_path, cut_object, "truncated"),
    ] {
        let line = said
            .lines()
            .find(|line| line.contains(&format!("file {path} (object {object})")))
            .ok_or_else(|| anyhow::anyhow!("{path} is not named: {said}"))?;
        assert!(line.contains(damage), "{line}");
    }

    let restore = shoal(&[
        "backup",
        "restore",
        "--store",
        store_arg,
        "--backup",
        id,
        "--out",
        path_str(out)?,
    ])
    .await?;
    let stderr = String::from_utf8_lossy(&restore.stderr);
    assert!(
        !restore.status.success(),
        "restore of a damaged backup succeeded"
    );
    assert!(stderr.contains("refusing to restore"), "{stderr}");
    assert!(!out.exists(), "restore created {}", out.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn physical_backups_are_incremental_verified_and_restorable() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, scenario())
        .await
        .map_err(|_| anyhow::anyhow!("the test did not finish within {TEST_TIMEOUT:?}"))?
}
