//! `shoal backup verify --restore` end to end (issue 6, build point 4): a live two-shard cluster
//! with two sharded collections (one of them holding most BSON types) and a writer inserting
//! into an unsharded one while the backup is taken. The manifest records every set's
//! collections, with the sharded collections' counts adding up to what was loaded. Then:
//! - `verify --restore` of the intact backup restores it into a scratch cluster, prints an `ok`
//!   line per set and collection and passes, leaving nothing in its scratch directory;
//! - after one recorded checksum is altered in the manifest (the files still verify), it fails
//!   naming that set and collection, the others still `ok`;
//! - a manifest of the previous format (no checksums) still verifies file by file, and
//!   `verify --restore` fails saying the backup records no collection checksums;
//! - with a stored file truncated, `verify --restore` names it and restores nothing.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bson::{
    Binary, Bson, DateTime, Decimal128, Document, Regex, Timestamp, doc, spec::BinarySubtype,
};
use mongodb::Client;
use serde_json::Value;
use shoal_tests::{
    TestCluster,
    cli::{event_writer, manifest_path, path_str, read_manifest, shoal, shoal_ok},
    sharding::{admin, shard_and_split, shard_split_move},
};

/// Documents of `app.items` (sharded on `k`).
const ITEMS: i32 = 10_000;
/// Documents of `app.orders` (sharded on `customer`, most BSON types).
const ORDERS: i32 = 2_000;
/// Shard key values of both collections run over 0..KEY_VALUES, split at KEY_VALUES / 2.
const KEY_VALUES: i32 = 1000;
/// Bytes of payload per item.
const PAYLOAD_BYTES: usize = 300;
/// Documents per `insert_many` while loading.
const LOAD_BATCH_DOCS: usize = 500;
/// Documents per insert of the background writer.
const WRITER_BATCH_DOCS: u64 = 20;
/// The most batches the writer sends (a bound; it is normally stopped long before).
const WRITER_BATCHES_MAX: u64 = 100_000;
/// How long the writer runs before the backup starts.
const WRITER_HEAD_START: Duration = Duration::from_millis(300);
/// How long the whole test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

/// An item; its payload is pseudo-random so that the stored files are not compressed away.
fn item(i: i32) -> Document {
    let payload = shoal_tests::incompressible(u64::try_from(i).unwrap_or(0), PAYLOAD_BYTES);
    doc! {
        "_id": i,
        "k": i % KEY_VALUES,
        "payload": payload,
    }
}

/// An order with most BSON types, so that both sides' decoding and re-encoding are exercised.
fn order(i: i32) -> Document {
    doc! {
        "_id": format!("order-{i:05}"),
        "customer": i % KEY_VALUES,
        "total": Decimal128::from_bytes([u8::try_from(i % 200).unwrap_or(0); 16]),
        "price": f64::from(i) / 7.0,
        "negativeZero": -0.0_f64,
        "big": i64::from(i) << 40,
        "at": DateTime::from_millis(1_700_000_000_000 + i64::from(i)),
        "ts": Timestamp { time: 1_700_000_000, increment: u32::try_from(i).unwrap_or(0) },
        "pattern": Regex { pattern: format!("^o{i}"), options: "i".to_owned() },
        "lines": [{"sku": i, "qty": 2}, {"sku": i + 1, "qty": Bson::Null}],
        "paid": i % 2 == 0,
        "id": bson::oid::ObjectId::from_bytes([7; 12]),
        "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: vec![u8::try_from(i % 256).unwrap_or(0); 16] },
    }
}

async fn load(client: &Client, coll: &str, docs: Vec<Document>) -> anyhow::Result<()> {
    let collection = client.database("app").collection::<Document>(coll);
    for batch in docs.chunks(LOAD_BATCH_DOCS) {
        collection.insert_many(batch).await?;
    }
    Ok(())
}

/// Inserts batches into the unsharded `app.events` until `stop`.
/// The recorded document count of `ns` on set `set`.
fn recorded_documents(manifest: &Value, set: &str, ns: &str) -> anyhow::Result<u64> {
    let sets = manifest["sets"].as_array().into_iter().flatten();
    let set = sets
        .into_iter()
        .find(|entry| entry["name"] == set)
        .ok_or_else(|| anyhow::anyhow!("no set {set} in {manifest}"))?;
    let collections = set["collections"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("set without collections: {set}"))?;
    Ok(collections
        .iter()
        .find(|entry| entry["ns"] == ns)
        .and_then(|entry| entry["documents"].as_u64())
        .unwrap_or(0))
}

/// `shoal backup verify --restore` with the scratch directory made in `scratch`; returns
/// (succeeded, stdout, stderr).
async fn verify_restore(
    store: &Path,
    id: Option<&str>,
    scratch: &Path,
) -> anyhow::Result<(bool, String, String)> {
    let mut args = vec![
        "backup",
        "verify",
        "--store",
        path_str(store)?,
        "--restore",
        "--scratch-dir",
        path_str(scratch)?,
    ];
    if let Some(id) = id {
        args.extend(["--backup", id]);
    }
    let output = shoal(&args).await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let left: Vec<_> = std::fs::read_dir(scratch)?.collect();
    assert!(
        left.is_empty(),
        "verify --restore left {left:?} in {}",
        scratch.display()
    );
    Ok((output.status.success(), stdout, stderr))
}

fn line_of<'a>(stdout: &'a str, head: &str) -> anyhow::Result<&'a str> {
    stdout
        .lines()
        .find(|line| line.starts_with(head))
        .ok_or_else(|| anyhow::anyhow!("no line {head:?} in:\n{stdout}"))
}

async fn scenario() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    // Chunks stay where they are: the test checks each shard's share of the collections.
    admin(&client, doc! {"balancerStop": 1}).await?;
    shard_and_split(&client, "app", "items", "k", Bson::Int32(KEY_VALUES / 2)).await?;
    shard_split_move(
        &client,
        "app",
        "orders",
        "customer",
        Bson::Int32(KEY_VALUES / 2),
    )
    .await?;
    load(&client, "items", (0..ITEMS).map(item).collect()).await?;
    load(&client, "orders", (0..ORDERS).map(order).collect()).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer_task = tokio::spawn(event_writer(
        client.clone(),
        WRITER_BATCH_DOCS,
        WRITER_BATCHES_MAX,
        Arc::clone(&stop),
        Arc::clone(&acked),
    ));
    tokio::time::sleep(WRITER_HEAD_START).await;
    let work = tempfile::Builder::new()
        .prefix("shoal-verify-restore-")
        .tempdir()?;
    let store = work.path().join("store");
    let scratch = work.path().join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let id = shoal_ok(&[
        "backup",
        "create",
        "--uri",
        &cluster.router_uri(),
        "--store",
        path_str(&store)?,
    ])
    .await?
    .trim()
    .to_owned();
    stop.store(true, Ordering::Relaxed);
    writer_task.await??;
    assert!(
        acked.load(Ordering::Relaxed) > 0,
        "the writer wrote nothing"
    );

    let manifest = read_manifest(&store, &id)?;
    assert_eq!(manifest["format"], 2, "{manifest}");
    for (ns, loaded) in [("app.items", ITEMS), ("app.orders", ORDERS)] {
        let shard0 = recorded_documents(&manifest, "shard0", ns)?;
        let shard1 = recorded_documents(&manifest, "shard1", ns)?;
        assert_eq!(shard0 + shard1, u64::try_from(loaded)?, "{ns}");
        assert!(shard0 > 0 && shard1 > 0, "{ns}: {shard0} + {shard1}");
    }

    // The intact backup (the latest, no --backup).
    let (passed, stdout, stderr) = verify_restore(&store, None, &scratch).await?;
    assert!(passed, "verify --restore failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("verified 1 backups"), "{stdout}");
    for set in ["shard0", "shard1"] {
        for ns in ["app.items", "app.orders"] {
            let line = line_of(&stdout, &format!("set {set}, {ns}: "))?;
            assert!(line.contains(": ok ("), "{line}");
        }
    }
    let summary = line_of(
        &stdout,
        &format!("backup {id} restored into a scratch cluster"),
    )?;
    assert!(summary.contains(": ok: "), "{summary}");
    eprintln!("verify --restore of the intact backup:\n{stdout}");

    altered_checksum(&store, &id, &scratch).await?;
    previous_format(&store, &id, &scratch).await?;
    damaged_file(&store, &id, &scratch).await?;
    cluster.finish();
    Ok(())
}

/// One digest altered in the manifest: the files verify, the comparison names the collection.
async fn altered_checksum(store: &Path, id: &str, scratch: &Path) -> anyhow::Result<()> {
    let path = manifest_path(store, id);
    let original = std::fs::read_to_string(&path)?;
    let mut manifest: Value = serde_json::from_str(&original)?;
    let sets = manifest["sets"]
        .as_array_mut()
        .ok_or_else(|| anyhow::anyhow!("no sets"))?;
    let shard1 = sets
        .iter_mut()
        .find(|set| set["name"] == "shard1")
        .ok_or_else(|| anyhow::anyhow!("no shard1"))?;
    let orders = shard1["collections"]
        .as_array_mut()
        .and_then(|all| all.iter_mut().find(|c| c["ns"] == "app.orders"))
        .ok_or_else(|| anyhow::anyhow!("shard1 records no app.orders"))?;
    let digest = orders["digest"].as_str().unwrap_or_default().to_owned();
    let flipped = if digest.starts_with('0') { "1" } else { "0" };
    orders["digest"] = Value::String(format!("{flipped}{}", &digest[1..]));
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)?;

    let (passed, stdout, stderr) = verify_restore(store, Some(id), scratch).await?;
    assert!(
        !passed,
        "verify --restore passed an altered checksum:\n{stdout}"
    );
    assert!(stdout.contains("files, "), "{stdout}");
    let bad = line_of(&stdout, "set shard1, app.orders: ")?;
    assert!(bad.contains("MISMATCH"), "{bad}");
    assert!(bad.contains(&digest), "{bad}");
    let good = line_of(&stdout, "set shard0, app.orders: ")?;
    assert!(good.contains(": ok ("), "{good}");
    assert!(stdout.contains("FAILED: 1 of "), "{stdout}");
    assert!(stderr.contains("verification failed"), "{stderr}");
    std::fs::write(&path, original)?;
    Ok(())
}

/// The manifest rewritten as format 1 (no checksums): plain verify passes, --restore fails
/// saying why.
async fn previous_format(store: &Path, id: &str, scratch: &Path) -> anyhow::Result<()> {
    let path = manifest_path(store, id);
    let mut manifest: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    manifest["format"] = Value::from(1);
    for set in manifest["sets"].as_array_mut().into_iter().flatten() {
        if let Some(set) = set.as_object_mut() {
            set.remove("collections");
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)?;
    let store_arg = path_str(store)?;
    let verified = shoal_ok(&["backup", "verify", "--store", store_arg, "--backup", id]).await?;
    assert!(verified.trim_end().ends_with(": ok"), "{verified}");
    let (passed, stdout, _) = verify_restore(store, Some(id), scratch).await?;
    assert!(
        !passed,
        "verify --restore passed without checksums:\n{stdout}"
    );
    assert!(
        stdout.contains("set shard1: the backup records no collection checksums"),
        "{stdout}"
    );
    Ok(())
}

/// A truncated object: `verify --restore` names it and restores nothing.
async fn damaged_file(store: &Path, id: &str, scratch: &Path) -> anyhow::Result<()> {
    let manifest = read_manifest(store, id)?;
    let file = manifest["sets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|set| set["files"].as_array().into_iter().flatten())
        .max_by_key(|file| file["size"].as_u64().unwrap_or(0))
        .ok_or_else(|| anyhow::anyhow!("no files in {manifest}"))?;
    let object = file["object"].as_str().unwrap_or_default();
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(store.join(object))?;
    cut.set_len(cut.metadata()?.len() / 2)?;
    drop(cut);
    let (passed, stdout, _) = verify_restore(store, Some(id), scratch).await?;
    assert!(
        !passed,
        "verify --restore passed a truncated file:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("(object {object}): truncated")),
        "{stdout}"
    );
    assert!(
        stdout.contains("not restored into a scratch cluster"),
        "{stdout}"
    );
    assert!(!stdout.contains("set shard0, "), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_restore_compares_a_scratch_cluster_with_the_backup() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, scenario())
        .await
        .map_err(|_| anyhow::anyhow!("the test did not finish within {TEST_TIMEOUT:?}"))?
}
