//! `shoal dump` and `shoal restore` end to end: dump a cluster holding a sharded collection (split
//! over two shards, every BSON type, a unique and a compound index) and unsharded collections,
//! restore into a second, fresh cluster, and check that every collection's documents are the
//! same bytes in the same `_id` order, that the sharded collection is sharded on the same key,
//! and that indexes and options came along; plain and gzipped dumps both. A truncated `.bson`
//! makes restore fail, naming the file.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use bson::{
    Binary, Bson, DateTime, Decimal128, Document, RawDocumentBuf, Regex, Timestamp, doc,
    oid::ObjectId, spec::BinarySubtype,
};
use futures::TryStreamExt as _;
use mongodb::Client;
use sha2::{Digest as _, Sha256};
use shoal_tests::{TestCluster, bin_path, sharding::shard_and_split};

/// Documents of the sharded collection.
const SHARDED_DOCS: i32 = 100_000;
/// Documents of the unsharded collections.
const PLAIN_DOCS: i32 = 300;
/// Documents per `insert_many` while loading the source.
const LOAD_BATCH_DOCS: usize = 1000;
/// Shard key values run over 0..KEY_VALUES; the collection is split at KEY_VALUES / 2.
const KEY_VALUES: i32 = 1000;
/// How long one `shoal dump` / `shoal restore` run may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the whole test may take (two clusters, five CLI runs).
const TEST_TIMEOUT: Duration = Duration::from_secs(1200);
/// The collections compared after each restore.
const NAMESPACES: &[(&str, &str)] = &[("src", "items"), ("src", "plain"), ("other", "notes")];

/// A document of the sharded collection holding every BSON type a dump must carry.
fn item(i: i32) -> Document {
    let uuid: Vec<u8> = (0..16u8).map(|b| b.wrapping_mul(31) ^ (i as u8)).collect();
    let mut oid = [0u8; 12];
    oid[..4].copy_from_slice(&i.to_be_bytes());
    let decimal: Decimal128 = format!("{i}.125")
        .parse()
        .unwrap_or(Decimal128::from_bytes([0; 16]));
    doc! {
        "_id": i,
        "k": i % KEY_VALUES,
        "seq": i,
        "double": f64::from(i) / 3.0,
        "string": format!("string {i} ünïcödé"),
        "nested": {"a": i, "b": {"c": [i, "x", {"d": Bson::Null}]}},
        "array": [1, "two", {"three": 3}, [4.5, false]],
        "binary": Binary { subtype: BinarySubtype::Generic, bytes: i.to_le_bytes().to_vec() },
        "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: uuid },
        "oid": ObjectId::from_bytes(oid),
        "bool": i % 2 == 0,
        "date": DateTime::from_millis(1_700_000_000_000 + i64::from(i)),
        "null": Bson::Null,
        "regex": Regex { pattern: format!("^a{i}.*z$"), options: "im".to_owned() },
        "code": Bson::JavaScriptCode(format!("function() {{ return {i}; }}")),
        "int32": i - SHARDED_DOCS / 2,
        "timestamp": Timestamp { time: 1_700_000_000, increment: i as u32 + 1 },
        "int64": i64::from(i) * 1_000_000_007,
        "decimal": decimal,
        "min": Bson::MinKey,
        "max": Bson::MaxKey,
    }
}

/// Loads the source cluster: `src.items` sharded on `{k: 1}` and split over both shards,
/// `src.plain` with a validator and an index, `other.notes` with ObjectId `_id`s.
async fn load_source(client: &Client) -> anyhow::Result<()> {
    shard_and_split(client, "src", "items", "k", Bson::Int32(KEY_VALUES / 2)).await?;
    let src = client.database("src");
    src.run_command(doc! {"createIndexes": "items", "indexes": [
        {"key": {"k": 1, "seq": 1}, "name": "k_seq_unique", "unique": true},
        {"key": {"string": 1, "date": -1}, "name": "string_date"},
    ]})
    .await?;
    let items = src.collection::<Document>("items");
    let all: Vec<Document> = (0..SHARDED_DOCS).map(item).collect();
    for batch in all.chunks(LOAD_BATCH_DOCS) {
        items.insert_many(batch).await?;
    }
    src.run_command(doc! {"create": "plain", "validator": {"n": {"$type": "int"}}})
        .await?;
    src.run_command(
        doc! {"createIndexes": "plain", "indexes": [{"key": {"n": -1}, "name": "n_desc"}]},
    )
    .await?;
    let plain: Vec<Document> = (0..PLAIN_DOCS)
        .map(|n| doc! {"_id": format!("p{n:04}"), "n": n, "tags": ["a", n.to_string()]})
        .collect();
    src.collection::<Document>("plain")
        .insert_many(plain)
        .await?;
    let notes: Vec<Document> = (0..PLAIN_DOCS)
        .map(|n| doc! {"_id": ObjectId::new(), "text": format!("note {n}")})
        .collect();
    client
        .database("other")
        .collection::<Document>("notes")
        .insert_many(notes)
        .await?;
    Ok(())
}

/// Runs the `shoal` binary with `args`, bounded by [`CLI_TIMEOUT`].
async fn shoal(args: &[&str]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(bin_path("shoal")?);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(CLI_TIMEOUT, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("shoal {args:?} did not finish within {CLI_TIMEOUT:?}"))?
        .map_err(anyhow::Error::from)
}

/// Runs `shoal` and fails unless it exits 0.
async fn shoal_ok(args: &[&str]) -> anyhow::Result<Output> {
    let output = shoal(args).await?;
    anyhow::ensure!(
        output.status.success(),
        "shoal {args:?} failed: {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", path.display()))
}

/// SHA-256 over the raw bytes of every document in `_id` order, and the document count.
async fn checksum(client: &Client, db: &str, coll: &str) -> anyhow::Result<(String, u64)> {
    let mut cursor = client
        .database(db)
        .collection::<RawDocumentBuf>(coll)
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .batch_size(1000)
        .await?;
    let mut hasher = Sha256::new();
    let mut count = 0u64;
    while let Some(document) = cursor.try_next().await? {
        hasher.update(document.as_bytes());
        count += 1;
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok((digest, count))
}

/// `(name, key, unique)` of every index, sorted by name.
async fn index_summary(client: &Client, db: &str, coll: &str) -> anyhow::Result<Vec<String>> {
    let indexes: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! {"listIndexes": coll})
        .await?
        .try_collect()
        .await?;
    let mut summary: Vec<String> = indexes
        .iter()
        .map(|index| {
            format!(
                "{} {} unique={}",
                index.get_str("name").unwrap_or("?"),
                index.get_document("key").cloned().unwrap_or_default(),
                index.get_bool("unique").unwrap_or(false)
            )
        })
        .collect();
    summary.sort();
    Ok(summary)
}

/// The `config.collections` entry's `key` and `unique`, if the collection is sharded.
async fn shard_key(client: &Client, ns: &str) -> anyhow::Result<Option<(Document, bool)>> {
    let entry = client
        .database("config")
        .collection::<Document>("collections")
        .find_one(doc! {"_id": ns})
        .await?;
    Ok(entry.map(|entry| {
        (
            entry.get_document("key").cloned().unwrap_or_default(),
            entry.get_bool("unique").unwrap_or(false),
        )
    }))
}

/// The collection's `listCollections` options.
async fn options(client: &Client, db: &str, coll: &str) -> anyhow::Result<Document> {
    let entries: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! {"listCollections": 1, "filter": {"name": coll}})
        .await?
        .try_collect()
        .await?;
    let entry = entries
        .first()
        .ok_or_else(|| anyhow::anyhow!("{db}.{coll} is not listed"))?;
    Ok(entry.get_document("options").cloned().unwrap_or_default())
}

/// Which `_id`s one side lacks (counts, and the first few with their shard key), to tell a
/// lost batch from scattered losses when the checksums differ.
async fn missing_summary(
    source: &Client,
    target: &Client,
    db: &str,
    coll: &str,
) -> anyhow::Result<String> {
    let ids = |client: &Client| {
        let collection = client.database(db).collection::<Document>(coll);
        async move {
            let documents: Vec<Document> = collection
                .find(doc! {})
                .projection(doc! {"_id": 1, "k": 1})
                .await?
                .try_collect()
                .await?;
            anyhow::Ok(
                documents
                    .into_iter()
                    .map(|d| (format!("{:?}", d.get("_id")), format!("{:?}", d.get("k"))))
                    .collect::<std::collections::BTreeMap<String, String>>(),
            )
        }
    };
    let (from, to) = (ids(source).await?, ids(target).await?);
    let missing: Vec<_> = from
        .iter()
        .filter(|(id, _)| !to.contains_key(*id))
        .collect();
    let extra = to.keys().filter(|id| !from.contains_key(*id)).count();
    Ok(format!(
        "{} missing, {extra} extra; first missing: {:?}; last: {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        missing.last()
    ))
}

/// Asserts that every collection of [`NAMESPACES`] is the same in both clusters.
async fn assert_same(source: &Client, target: &Client, label: &str) -> anyhow::Result<()> {
    for (db, coll) in NAMESPACES {
        let ns = format!("{db}.{coll}");
        let expected = checksum(source, db, coll).await?;
        let restored = checksum(target, db, coll).await?;
        if restored != expected {
            eprintln!(
                "{label}: {ns} differs: {}",
                missing_summary(source, target, db, coll).await?
            );
        }
        assert_eq!(restored, expected, "{label}: documents of {ns}");
        assert_eq!(
            index_summary(target, db, coll).await?,
            index_summary(source, db, coll).await?,
            "{label}: indexes of {ns}"
        );
        assert_eq!(
            shard_key(target, &ns).await?,
            shard_key(source, &ns).await?,
            "{label}: shard key of {ns}"
        );
        assert_eq!(
            options(target, db, coll).await?,
            options(source, db, coll).await?,
            "{label}: options of {ns}"
        );
    }
    assert_eq!(
        checksum(target, "src", "items").await?.1,
        SHARDED_DOCS as u64,
        "{label}"
    );
    Ok(())
}

/// Checks that a dump directory holds the expected files, and the sharded collection's
/// metadata names its shard key.
fn assert_layout(dir: &Path, gzip: bool) -> anyhow::Result<()> {
    let gz = if gzip { ".gz" } else { "" };
    for (db, coll) in NAMESPACES {
        for suffix in [".bson", ".metadata.json"] {
            let path = dir.join(db).join(format!("{coll}{suffix}{gz}"));
            anyhow::ensure!(path.is_file(), "{} is missing", path.display());
        }
    }
    for skipped in ["admin", "config", "local"] {
        anyhow::ensure!(!dir.join(skipped).exists(), "{skipped} was dumped");
    }
    if !gzip {
        let metadata = std::fs::read_to_string(dir.join("src").join("items.metadata.json"))?;
        anyhow::ensure!(
            metadata.contains(r#""shardKey":{"k":{"$numberInt":"1"}}"#),
            "{metadata}"
        );
        anyhow::ensure!(metadata.contains("k_seq_unique"), "{metadata}");
    }
    Ok(())
}

/// Copies the dump of `src.items` into a new dump directory and cuts its `.bson` short.
fn truncated_copy(dump: &Path, into: &Path) -> anyhow::Result<PathBuf> {
    let src = into.join("src");
    std::fs::create_dir_all(&src)?;
    for name in ["items.bson", "items.metadata.json"] {
        std::fs::copy(dump.join("src").join(name), src.join(name))?;
    }
    let bson = src.join("items.bson");
    let length = std::fs::metadata(&bson)?.len();
    let file = std::fs::OpenOptions::new().write(true).open(&bson)?;
    file.set_len(length - 7)?;
    Ok(bson)
}

async fn round_trip() -> anyhow::Result<()> {
    let source = TestCluster::start(2).await?;
    let source_client = source.router_client().await?;
    load_source(&source_client).await?;
    let work = tempfile::Builder::new().prefix("shoal-dump-").tempdir()?;
    let plain_dir = work.path().join("plain");
    let gzip_dir = work.path().join("gzip");
    let source_uri = source.router_uri();

    shoal_ok(&["dump", &source_uri, "--out", path_str(&plain_dir)?]).await?;
    shoal_ok(&["dump", &source_uri, "--out", path_str(&gzip_dir)?, "--gzip"]).await?;
    assert_layout(&plain_dir, false)?;
    assert_layout(&gzip_dir, true)?;

    // --db/--collection dump one collection only.
    let one_dir = work.path().join("one");
    shoal_ok(&[
        "dump",
        &source_uri,
        "--out",
        path_str(&one_dir)?,
        "--db",
        "src",
        "--collection",
        "plain",
    ])
    .await?;
    let mut files: Vec<String> = std::fs::read_dir(one_dir.join("src"))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    files.sort();
    assert_eq!(files, ["plain.bson", "plain.metadata.json"]);
    assert!(!one_dir.join("other").exists());

    // The target's balancer runs and migrates `src.items` while it is restored: that once lost
    // one shard's half of an insert batch (a catch-up drain ran between an insert's apply and
    // its write to storage, and sent the documents as deleted).
    let target = TestCluster::start(2).await?;
    let target_client = target.router_client().await?;
    let target_uri = target.router_uri();
    shoal_ok(&["restore", &target_uri, path_str(&plain_dir)?]).await?;
    assert_same(&source_client, &target_client, "plain dump").await?;

    // The gzipped dump over the restored data: --drop replaces every collection.
    shoal_ok(&["restore", &target_uri, path_str(&gzip_dir)?, "--drop"]).await?;
    assert_same(&source_client, &target_client, "gzip dump with --drop").await?;

    // Without --drop, restoring again collides with the documents already there.
    let again = shoal(&[
        "restore",
        &target_uri,
        path_str(&plain_dir)?,
        "--db",
        "other",
    ])
    .await?;
    assert!(!again.status.success(), "a second restore succeeded");

    // A truncated .bson: a non-zero exit naming the file.
    let bson = truncated_copy(&plain_dir, &work.path().join("cut"))?;
    let cut = shoal(&[
        "restore",
        &target_uri,
        path_str(&work.path().join("cut"))?,
        "--drop",
    ])
    .await?;
    let stderr = String::from_utf8_lossy(&cut.stderr);
    assert!(
        !cut.status.success(),
        "truncated restore succeeded: {stderr}"
    );
    assert!(stderr.contains(path_str(&bson)?), "stderr: {stderr}");
    assert!(stderr.contains("truncated"), "stderr: {stderr}");

    source.finish();
    target.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dump_and_restore_round_trip_through_the_router() -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, round_trip())
        .await
        .map_err(|_| anyhow::anyhow!("the test did not finish within {TEST_TIMEOUT:?}"))?
}
