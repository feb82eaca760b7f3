//! Point-in-time recovery end to end (issue 6's acceptance): a live two-shard cluster with
//! writers running and `shoal backup archive` copying the oplog; a backup; more writes; time T
//! noted; more writes; the sharded collection dropped. `shoal backup restore --to-time T` into a
//! new cluster (new addresses, new ports) must hold exactly the writes acknowledged before T:
//! every `_id` acknowledged before T is there, none sent at or after T is, on both shards; and
//! the new cluster serves reads and writes.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bson::{Bson, Document, doc};
use futures::TryStreamExt as _;
use mongodb::Client;
use shoal_tests::{
    POLL_INTERVAL, RestoredSet, TestCluster, bin_path,
    cli::{path_str, read_manifest, restore_to_time_args, shoal, shoal_ok, wait_archive_past},
    cluster::{CONFIG_REPLSET, shard_name},
    mongo::direct_client,
    ports::free_port,
    process::Process,
    sharding::shard_and_split,
};

/// Writer tasks.
const WRITERS: usize = 2;
/// Documents per insert of a writer.
const WRITER_BATCH_DOCS: i64 = 10;
/// Batches one writer sends at most (a bound; it is normally stopped long before).
const WRITER_BATCHES_MAX: usize = 100_000;
/// Shard key values run over 0..KEY_VALUES; the collection is split at KEY_VALUES / 2.
const KEY_VALUES: i64 = 1000;
/// Documents of [`BLOB_BYTES`] in the one large write (about 20 MB in one command).
const BLOB_DOCS: i64 = 20;
const BLOB_BYTES: usize = 1_000_000;
/// How long the writers run in each phase (before the backup, between it and T, after T).
const PHASE: Duration = Duration::from_millis(1500);
/// How long the archive may take to pass T.
const ARCHIVE_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the restored cluster may take to serve the collection.
const RESTORED_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the whole test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(600);

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One insert batch a writer sent: its first `_id`, when it was sent and when acknowledged
/// (`None`: failed or unanswered).
#[derive(Clone, Copy, Debug)]
struct Sent {
    first_id: i64,
    sent_millis: i64,
    acked_millis: Option<i64>,
}

/// Inserts batches of [`WRITER_BATCH_DOCS`] into `app.items` until `stop`, recording each.
async fn writer(
    client: Client,
    next_id: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
) -> anyhow::Result<()> {
    let items = client.database("app").collection::<Document>("items");
    for _ in 0..WRITER_BATCHES_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let first_id = next_id.fetch_add(WRITER_BATCH_DOCS, Ordering::Relaxed);
        let docs: Vec<Document> = (first_id..first_id + WRITER_BATCH_DOCS)
            .map(|id| doc! {"_id": id, "k": id % KEY_VALUES, "w": "live"})
            .collect();
        let sent_millis = now_millis();
        let result = items.insert_many(docs).await;
        let acked_millis = result.is_ok().then(now_millis);
        log.lock()
            .map_err(|_| anyhow::anyhow!("writer log poisoned"))?
            .push(Sent {
                first_id,
                sent_millis,
                acked_millis,
            });
    }
    Ok(())
}

/// Every `_id` of `app.items` through `client`, retried until the collection answers.
async fn restored_ids(client: &Client) -> anyhow::Result<BTreeSet<i64>> {
    let started = Instant::now();
    loop {
        let attempt: anyhow::Result<BTreeSet<i64>> = async {
            let docs: Vec<Document> = client
                .database("app")
                .collection::<Document>("items")
                .find(doc! {})
                .projection(doc! {"_id": 1})
                .await?
                .try_collect()
                .await?;
            docs.iter()
                .map(|d| d.get_i64("_id").map_err(anyhow::Error::from))
                .collect()
        }
        .await;
        match attempt {
            Ok(ids) if !ids.is_empty() => return Ok(ids),
            Ok(_) | Err(_) if started.elapsed() < RESTORED_READY_TIMEOUT => {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Ok(_) => anyhow::bail!("the restored app.items is empty"),
            Err(error) => return Err(error.context("reading the restored app.items")),
        }
    }
}

/// `verify` passes on the store, then names damaged archive segments; a restore to the same
/// time then refuses and writes nothing. `restore_args` are the successful restore's arguments.
async fn damaged_archive(store: &Path, restore_args: &[&str], out: &Path) -> anyhow::Result<()> {
    shoal_ok(&["backup", "verify", "--store", path_str(store)?]).await?;
    let mut damaged = 0;
    for cluster in std::fs::read_dir(store.join("archive"))?.flatten() {
        let segments = cluster.path().join(shard_name(0)).join("segments");
        for record in std::fs::read_dir(&segments).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(record.path())?;
            let segment: serde_json::Value = serde_json::from_str(&text)?;
            let object = store.join(segment["object"].as_str().unwrap_or_default());
            let mut bytes = std::fs::read(&object)?;
            if let Some(byte) = bytes.last_mut() {
                *byte ^= 0xff;
            }
            std::fs::write(&object, bytes)?;
            damaged += 1;
        }
    }
    assert!(damaged > 0, "shard0's archive has segments");
    let verify = shoal(&["backup", "verify", "--store", path_str(store)?]).await?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        !verify.status.success(),
        "verify passed a damaged archive: {stdout}"
    );
    assert!(
        stdout.contains("archive of cluster") && stdout.contains("corrupted"),
        "verify does not name the damaged segments: {stdout}"
    );
    let mut args: Vec<&str> = restore_args.to_vec();
    let out_index = args
        .iter()
        .position(|arg| *arg == "--out")
        .ok_or_else(|| anyhow::anyhow!("no --out"))?;
    args[out_index + 1] = path_str(out)?;
    let refused = shoal(&args).await?;
    assert!(
        !refused.status.success(),
        "a restore over a damaged archive succeeded"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("damaged"),
        "the refusal does not say why: {stderr}"
    );
    assert!(
        std::fs::read_dir(out).map_or(true, |mut dir| dir.next().is_none()),
        "a refused restore wrote into {}",
        out.display()
    );
    Ok(())
}

async fn scenario() -> anyhow::Result<()> {
    let cluster = TestCluster::start(2).await?;
    let client = cluster.router_client().await?;
    let placement =
        shard_and_split(&client, "app", "items", "k", Bson::Int64(KEY_VALUES / 2)).await?;
    drop(placement);
    let store = tempfile::Builder::new().prefix("shoal-pitr-").tempdir()?;
    let store_path = store.path().join("store");
    let uri = cluster.router_uri();
    let mut archiver = Process::new(
        "archiver",
        bin_path("shoal")?,
        vec![
            "backup".into(),
            "archive".into(),
            "--uri".into(),
            uri.clone(),
            "--store".into(),
            path_str(&store_path)?.to_owned(),
            "--interval-ms".into(),
            "200".into(),
        ],
        store.path().join("archiver.log"),
    );
    archiver.start(&[])?;

    let next_id = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            tokio::spawn(writer(
                client.clone(),
                Arc::clone(&next_id),
                Arc::clone(&stop),
                Arc::clone(&log),
            ))
        })
        .collect();
    tokio::time::sleep(PHASE).await;
    let backup_id = shoal_ok(&[
        "backup",
        "create",
        "--uri",
        &uri,
        "--store",
        path_str(&store_path)?,
    ])
    .await?;
    eprintln!("backup {}", backup_id.trim());
    // One write command larger than a BSON document may be (an unsharded collection, so one
    // shard gets all of it as one oplog entry): the archive reads and stores it in parts.
    let blobs: Vec<Document> = (0..BLOB_DOCS)
        .map(|id| doc! {"_id": id, "blob": "b".repeat(BLOB_BYTES)})
        .collect();
    client
        .database("app")
        .collection::<Document>("blobs")
        .insert_many(blobs)
        .await?;
    tokio::time::sleep(PHASE).await;
    let time = now_millis();
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for task in writers {
        task.await??;
    }
    client
        .database("app")
        .collection::<Document>("items")
        .drop()
        .await?;
    let sets = vec![CONFIG_REPLSET.to_owned(), shard_name(0), shard_name(1)];
    wait_archive_past(&store_path, &sets, time, ARCHIVE_CATCH_UP_TIMEOUT).await?;
    archiver.kill();

    let config_port = free_port()?;
    let shard_ports = vec![free_port()?, free_port()?];
    let out = store.path().join("restored");
    let hosts = [
        (CONFIG_REPLSET.to_owned(), config_port),
        (shard_name(0), shard_ports[0]),
        (shard_name(1), shard_ports[1]),
    ];
    let owned_args = restore_to_time_args(&store_path, &out, time, &hosts)?;
    let args: Vec<&str> = owned_args.iter().map(String::as_str).collect();
    let restore_started = Instant::now();
    shoal_ok(&args).await?;
    let restore_took = restore_started.elapsed();

    let restored = TestCluster::start_restored(&out, config_port, shard_ports.clone()).await?;
    let restored_client = restored.router_client().await?;
    let ids = restored_ids(&restored_client).await?;
    let ready_took = restore_started.elapsed();

    let sent = log
        .lock()
        .map_err(|_| anyhow::anyhow!("writer log poisoned"))?
        .clone();
    let issued = next_id.load(Ordering::Relaxed);
    let (before, after, unsure) = check_cut(&ids, &sent, time, issued);
    let blob_ids: BTreeSet<i64> = restored_client
        .database("app")
        .collection::<Document>("blobs")
        .distinct("_id", doc! {})
        .await?
        .iter()
        .filter_map(Bson::as_i64)
        .collect();
    assert_eq!(
        blob_ids,
        (0..BLOB_DOCS).collect::<BTreeSet<i64>>(),
        "the large write made before T is not restored whole"
    );
    // Both shards hold documents of the restored collection.
    for port in &shard_ports {
        let shard = direct_client(*port).await?;
        let n = shard
            .database("app")
            .collection::<Document>("items")
            .count_documents(doc! {})
            .await?;
        assert!(
            n > 0,
            "the shard at port {port} holds no app.items documents"
        );
    }
    // The new cluster takes writes and names its own shards.
    restored_client
        .database("app")
        .collection::<Document>("items")
        .insert_one(doc! {"_id": -1_i64, "k": 1_i64})
        .await?;
    let shards = restored_client
        .database("admin")
        .run_command(doc! {"listShards": 1})
        .await?;
    for port in &shard_ports {
        assert!(
            shards.to_string().contains(&format!("127.0.0.1:{port}")),
            "listShards does not name the new shard at {port}: {shards}"
        );
    }
    restored.finish();
    sets_alone_at_the_time(&store_path, &store.path().join("sets"), time, &ids).await?;
    backup_at_its_point(
        &store_path,
        backup_id.trim(),
        &store.path().join("backup-itself"),
        &sent,
        issued,
    )
    .await?;
    damaged_archive(&store_path, &args, &store.path().join("refused")).await?;
    eprintln!(
        "point-in-time restore: {} documents ({before} batches before T, {after} after, {unsure} \
         in flight at T); restore command {:.2}s, until the new cluster served the collection {:.2}s",
        ids.len(),
        restore_took.as_secs_f64(),
        ready_took.as_secs_f64()
    );
    cluster.finish();
    Ok(())
}

/// Checks the restored `ids` against the writers' log for a cut at `time`: every batch
/// acknowledged before it is whole, every batch sent at or after it is absent, and nothing else
/// is there. Returns the batches before, after and in flight at the cut.
fn check_cut(ids: &BTreeSet<i64>, sent: &[Sent], time: i64, issued: i64) -> (usize, usize, usize) {
    let (mut before, mut after, mut unsure) = (0usize, 0usize, 0usize);
    for batch in sent {
        let batch_ids = batch.first_id..batch.first_id + WRITER_BATCH_DOCS;
        if batch.acked_millis.is_some_and(|acked| acked < time) {
            before += 1;
            for id in batch_ids {
                assert!(
                    ids.contains(&id),
                    "_id {id} was acknowledged before {time} but is missing"
                );
            }
        } else if batch.sent_millis >= time {
            after += 1;
            for id in batch_ids {
                assert!(
                    !ids.contains(&id),
                    "_id {id} was sent at or after {time} but is present"
                );
            }
        } else {
            unsure += 1;
        }
    }
    for id in ids {
        assert!((0..issued).contains(id), "_id {id} was never written");
    }
    assert!(
        before > 0 && after > 0,
        "the writers wrote on both sides of {time}"
    );
    (before, after, unsure)
}

/// Each shard restored on its own (`--set`) to the same time holds its part of the cluster's
/// restore: together, exactly the documents of `app.items` the whole restore holds.
async fn sets_alone_at_the_time(
    store: &Path,
    out: &Path,
    time: i64,
    expected: &BTreeSet<i64>,
) -> anyhow::Result<()> {
    let mut union = BTreeSet::new();
    for i in 0..2 {
        let name = shard_name(i);
        let port = free_port()?;
        let mut args = restore_to_time_args(store, out, time, &[(name.clone(), port)])?;
        args.extend(["--set".to_owned(), name.clone()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        shoal_ok(&args).await?;
        let set = RestoredSet::start_shard(&out.join(&name), &name, port).await?;
        let found = set
            .client()
            .await?
            .database("app")
            .collection::<Document>("items")
            .distinct("_id", doc! {})
            .await?;
        let found: BTreeSet<i64> = found.iter().filter_map(Bson::as_i64).collect();
        anyhow::ensure!(!found.is_empty(), "set {name} restored alone holds nothing");
        anyhow::ensure!(
            union.is_disjoint(&found),
            "two shards restored alone hold the same _id"
        );
        union.extend(found);
        set.stop();
    }
    anyhow::ensure!(
        &union == expected,
        "the shards restored alone hold {} documents, the whole restore {}",
        union.len(),
        expected.len()
    );
    eprintln!(
        "each shard restored alone: {} documents together",
        union.len()
    );
    Ok(())
}

/// A plain restore of the backup into a new cluster (no `--to-time`) brings every set to the
/// backup's recorded cluster-wide point: the same cut, at `consistentAtMillis`.
async fn backup_at_its_point(
    store: &Path,
    backup_id: &str,
    out: &Path,
    sent: &[Sent],
    issued: i64,
) -> anyhow::Result<()> {
    let manifest = read_manifest(store, backup_id)?;
    let point = manifest
        .get("consistentAtMillis")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| anyhow::anyhow!("backup {backup_id} has no consistentAtMillis"))?;
    let config_port = free_port()?;
    let shard_ports = vec![free_port()?, free_port()?];
    let hosts = [
        (CONFIG_REPLSET.to_owned(), config_port),
        (shard_name(0), shard_ports[0]),
        (shard_name(1), shard_ports[1]),
    ];
    let mut args: Vec<String> = restore_to_time_args(store, out, point, &hosts)?
        .into_iter()
        .collect();
    // The same restore without the time: the backup's own point is used.
    let at = args
        .iter()
        .position(|arg| arg == "--to-time")
        .ok_or_else(|| anyhow::anyhow!("no --to-time in {args:?}"))?;
    args.drain(at..at + 2);
    args.extend(["--backup".to_owned(), backup_id.to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    shoal_ok(&args).await?;
    let restored = TestCluster::start_restored(out, config_port, shard_ports).await?;
    let ids = restored_ids(&restored.router_client().await?).await?;
    let (before, after, unsure) = check_cut(&ids, sent, point, issued);
    eprintln!(
        "the backup itself, restored into a new cluster: {} documents at its point ({before} \
         batches before, {after} after, {unsure} in flight)",
        ids.len()
    );
    restored.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_to_a_point_in_time_into_a_new_cluster() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, scenario())
        .await
        .map_err(|_| anyhow::anyhow!("the test did not finish within {TEST_TIMEOUT:?}"))?
}
