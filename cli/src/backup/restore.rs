//! `shoal restore`: loads a dump directory (mongodump's layout, see [`super::layout`]) through
//! the router. Per collection: drop it (with `--drop`), create it with its options, shard it
//! on its dumped shard key, create its indexes, then insert its documents in unordered batches.
//!
//! A blocking thread reads and decodes the `.bson` file while the previous batch is being
//! inserted; a bounded channel keeps at most [`BATCHES_IN_FLIGHT`] batches in memory.
//!
//! Restore stops at the first error. Documents already inserted stay (rerun with `--drop` to
//! start that collection over): undoing them would need a transaction Shoal does not have,
//! and a partly restored collection is easier to inspect than a vanished one.

use std::{
    fs::File,
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use bson::{Bson, Document, RawDocumentBuf, doc};
use flate2::read::MultiGzDecoder;
use mongodb::{
    Client, Collection, Database,
    error::{ErrorKind, WriteFailure},
};
use tokio::sync::mpsc;

use super::{
    connect,
    layout::{self, DumpedCollection, Selection},
    metadata::CollectionMetadata,
    progress::{CollectionProgress, Reporter},
    stream::{BsonStream, next_batch},
};

/// Documents per `insert_many`.
const BATCH_DOCS: usize = 1000;
/// A batch also ends once it holds this many bytes, so 1000 large documents do not sit in
/// memory at once (the driver splits a batch into messages itself).
const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Batches read ahead of the inserts.
const BATCHES_IN_FLIGHT: usize = 2;
/// The largest metadata file read (a metadata file holds options and index specs).
const METADATA_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The read buffer in front of each file (and behind each gzip decoder).
const READ_BUFFER_BYTES: usize = 1024 * 1024;
/// The server's NamespaceExists code: `create` of an existing collection.
const NAMESPACE_EXISTS: i32 = 48;

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Connection string of the router.
    pub uri: String,
    /// The dump directory (holding one directory per database).
    pub dir: PathBuf,
    /// Which databases and collections.
    pub selection: Selection,
    /// Whether to drop each collection before restoring it.
    pub drop: bool,
}

/// What a restore loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Collections restored.
    pub collections: usize,
    /// Documents inserted.
    pub documents: u64,
}

/// One collection of the dump, with its database and directory.
#[derive(Debug)]
struct Planned {
    db: String,
    db_dir: PathBuf,
    dumped: DumpedCollection,
}

/// Runs `shoal restore`; see the module documentation.
pub async fn run(options: &RestoreOptions, reporter: Reporter) -> anyhow::Result<RestoreSummary> {
    let plan = plan(&options.dir, &options.selection)?;
    if plan.is_empty() {
        anyhow::bail!(
            "nothing to restore: {} holds no dump of {}",
            options.dir.display(),
            options.selection.describe()
        );
    }
    let client = connect(&options.uri, "shoal restore").await?;
    let mut summary = RestoreSummary::default();
    for planned in &plan {
        let ns = format!("{}.{}", planned.db, planned.dumped.collection);
        summary.documents += restore_collection(&client, planned, options.drop, reporter)
            .await
            .with_context(|| format!("cannot restore {ns}"))?;
        summary.collections += 1;
    }
    Ok(summary)
}

/// Finds the selected collections in the dump directory, databases and collections sorted by
/// name.
fn plan(dir: &Path, selection: &Selection) -> anyhow::Result<Vec<Planned>> {
    let mut plan = Vec::new();
    for (db, db_dir) in entries(dir, true)? {
        if !selection.includes_db(&db) {
            continue;
        }
        let files: Vec<String> = entries(&db_dir, false)?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let found = layout::collections_in(&db, &files, selection)
            .with_context(|| format!("in {}", db_dir.display()))?;
        plan.extend(found.into_iter().map(|dumped| Planned {
            db: db.clone(),
            db_dir: db_dir.clone(),
            dumped,
        }));
    }
    Ok(plan)
}

/// The directories (`dirs`) or files in `dir` with UTF-8 names, sorted by name.
fn entries(dir: &Path, dirs: bool) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let read = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut found = Vec::new();
    for entry in read {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let is_dir = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", entry.path().display()))?
            .is_dir();
        if is_dir != dirs {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) => found.push((name, entry.path())),
            Err(name) => tracing::warn!(?name, "skipping a file name that is not UTF-8"),
        }
    }
    found.sort();
    Ok(found)
}

/// Restores one collection; returns the documents inserted.
async fn restore_collection(
    client: &Client,
    planned: &Planned,
    drop: bool,
    reporter: Reporter,
) -> anyhow::Result<u64> {
    let coll = planned.dumped.collection.as_str();
    let ns = format!("{}.{coll}", planned.db);
    let metadata = match &planned.dumped.metadata {
        Some(name) => Some(read_metadata(&planned.db_dir.join(name))?),
        None => None,
    };
    let database = client.database(&planned.db);
    if drop {
        database
            .collection::<Document>(coll)
            .drop()
            .await
            .context("drop failed")?;
    }
    prepare_collection(client, &database, coll, metadata.as_ref()).await?;
    let Some(bson_name) = &planned.dumped.bson else {
        reporter.start("restored", &ns, Some(0)).finish();
        return Ok(0);
    };
    let path = planned.db_dir.join(bson_name);
    let mut progress = reporter.start("restored", &ns, None);
    let result = insert_documents(database.collection(coll), path, &mut progress).await;
    let documents = progress.docs();
    match result {
        Ok(()) => progress.finish(),
        Err(error) => {
            progress.abandon();
            // A batch that failed on the network may have been partly inserted: "at least".
            return Err(error.context(format!(
                "at least {documents} documents were inserted before the error and stay \
                 (rerun with --drop to start over)"
            )));
        }
    }
    Ok(documents)
}

/// Creates the collection with its options, shards it like the source, creates its indexes.
async fn prepare_collection(
    client: &Client,
    database: &Database,
    coll: &str,
    metadata: Option<&CollectionMetadata>,
) -> anyhow::Result<()> {
    let create = match metadata {
        Some(metadata) => metadata.create_command(coll),
        None => doc! {"create": coll},
    };
    match database.run_command(create).await {
        Ok(_) => {}
        Err(error) if server_code(&error) == Some(NAMESPACE_EXISTS) => {}
        Err(error) => return Err(error).context("create failed"),
    }
    let Some(metadata) = metadata else {
        return Ok(());
    };
    let ns = format!("{}.{coll}", database.name());
    if let Some(shard) = metadata.shard_collection_command(&ns) {
        let admin = client.database("admin");
        admin
            .run_command(doc! {"enableSharding": database.name()})
            .await
            .context("enableSharding failed")?;
        admin
            .run_command(shard.clone())
            .await
            .with_context(|| format!("{shard} failed"))?;
    }
    let indexes = metadata.indexes_to_create();
    if !indexes.is_empty() {
        let indexes: Vec<Bson> = indexes.into_iter().map(Bson::Document).collect();
        database
            .run_command(doc! {"createIndexes": coll, "indexes": indexes})
            .await
            .context("createIndexes failed")?;
    }
    Ok(())
}

/// Reads and parses a metadata file; errors name the file.
fn read_metadata(path: &Path) -> anyhow::Result<CollectionMetadata> {
    let mut text = String::new();
    open_dump_file(path)?
        .take(METADATA_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > METADATA_BYTES_MAX {
        anyhow::bail!(
            "{}: larger than {METADATA_BYTES_MAX} bytes, not a metadata file",
            path.display()
        );
    }
    CollectionMetadata::from_json(&text).with_context(|| format!("{}", path.display()))
}

/// Opens a dump file, decompressing it if its name ends in `.gz`.
fn open_dump_file(path: &Path) -> anyhow::Result<Box<dyn Read + Send>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let gzip = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(layout::is_gzip);
    Ok(if gzip {
        let decoder = MultiGzDecoder::new(BufReader::with_capacity(READ_BUFFER_BYTES, file));
        Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, decoder))
    } else {
        Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, file))
    })
}

type BatchResult = anyhow::Result<Vec<RawDocumentBuf>>;

/// Streams the `.bson` file at `path` into the collection, batch by batch.
async fn insert_documents(
    collection: Collection<RawDocumentBuf>,
    path: PathBuf,
    progress: &mut CollectionProgress,
) -> anyhow::Result<()> {
    let (sender, mut receiver) = mpsc::channel::<BatchResult>(BATCHES_IN_FLIGHT);
    let reader = tokio::task::spawn_blocking(move || read_batches(&path, &sender));
    while let Some(batch) = receiver.recv().await {
        insert_batch(&collection, &batch?, progress).await?;
    }
    reader.await.context("the file reader failed")?;
    Ok(())
}

/// Sends the file's documents in batches, then ends (the channel closes); a read error is sent
/// as the last item. Stops early if the receiver is gone (an insert failed).
fn read_batches(path: &Path, sender: &mpsc::Sender<BatchResult>) {
    let reader = match open_dump_file(path) {
        Ok(reader) => reader,
        Err(error) => {
            let _ = sender.blocking_send(Err(error));
            return;
        }
    };
    let mut stream = BsonStream::new(reader);
    loop {
        match next_batch(&mut stream, BATCH_DOCS, BATCH_BYTES_MAX) {
            Ok(batch) if batch.is_empty() => return,
            Ok(batch) => {
                if sender.blocking_send(Ok(batch)).is_err() {
                    return;
                }
            }
            Err(error) => {
                let error = anyhow::Error::new(error).context(path.display().to_string());
                let _ = sender.blocking_send(Err(error));
                return;
            }
        }
    }
}

/// One unordered `insert_many`, counted in `progress` (on a write error, the documents the
/// server did insert); a failure says how many documents of the batch failed and why.
async fn insert_batch(
    collection: &Collection<RawDocumentBuf>,
    batch: &[RawDocumentBuf],
    progress: &mut CollectionProgress,
) -> anyhow::Result<()> {
    let Err(error) = collection.insert_many(batch).ordered(false).await else {
        progress.add(batch.len() as u64);
        return Ok(());
    };
    if let ErrorKind::InsertMany(insert) = error.kind.as_ref()
        && let Some(errors) = &insert.write_errors
        && let Some(first) = errors.first()
    {
        progress.add(batch.len().saturating_sub(errors.len()) as u64);
        anyhow::bail!(
            "{} of a batch of {} documents were not inserted; the first (document {}): {} (code {})",
            errors.len(),
            batch.len(),
            first.index,
            first.message,
            first.code
        );
    }
    Err(error).context("insert failed")
}

/// The server error code of a command or write error.
fn server_code(error: &mongodb::error::Error) -> Option<i32> {
    match error.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flate2::{Compression, write::GzEncoder};

    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn plan_reads_the_layout_and_skips_system_databases() {
        let dir = tempfile::tempdir().unwrap();
        for db in ["app", "admin", "zoo"] {
            std::fs::create_dir(dir.path().join(db)).unwrap();
        }
        write(&dir.path().join("app/users.bson"), b"");
        write(&dir.path().join("app/users.metadata.json"), b"{}");
        write(&dir.path().join("admin/system.users.bson"), b"");
        write(&dir.path().join("zoo/cats.bson.gz"), b"");
        write(&dir.path().join("oplog.bson"), b"");
        let planned = plan(dir.path(), &Selection::default()).unwrap();
        let names: Vec<String> = planned
            .iter()
            .map(|p| format!("{}.{}", p.db, p.dumped.collection))
            .collect();
        assert_eq!(names, ["app.users", "zoo.cats"]);
        let only = Selection::new(Some("zoo".into()), None).unwrap();
        assert_eq!(plan(dir.path(), &only).unwrap().len(), 1);
        assert!(plan(&dir.path().join("missing"), &only).is_err());
    }

    #[test]
    fn metadata_files_plain_gzip_and_bad() {
        let dir = tempfile::tempdir().unwrap();
        let json = br#"{"collectionName": "c", "indexes": []}"#;
        write(&dir.path().join("c.metadata.json"), json);
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(json).unwrap();
        write(
            &dir.path().join("c.metadata.json.gz"),
            &encoder.finish().unwrap(),
        );
        for name in ["c.metadata.json", "c.metadata.json.gz"] {
            let metadata = read_metadata(&dir.path().join(name)).unwrap();
            assert_eq!(metadata.collection_name, "c");
        }
        write(&dir.path().join("bad.metadata.json"), b"{not json");
        let error = read_metadata(&dir.path().join("bad.metadata.json")).unwrap_err();
        assert!(
            format!("{error:#}").contains("bad.metadata.json"),
            "{error:#}"
        );
    }

    #[test]
    fn read_batches_reports_truncation_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for i in 0..3 {
            bytes.extend(
                RawDocumentBuf::from_document(&doc! {"_id": i})
                    .unwrap()
                    .into_bytes(),
            );
        }
        bytes.truncate(bytes.len() - 3);
        let path = dir.path().join("cut.bson");
        write(&path, &bytes);
        let (sender, mut receiver) = mpsc::channel(BATCHES_IN_FLIGHT);
        read_batches(&path, &sender);
        drop(sender);
        let first = receiver.blocking_recv().unwrap();
        let error = first.unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("cut.bson"), "{message}");
        assert!(message.contains("truncated"), "{message}");
        assert!(receiver.blocking_recv().is_none());
    }

    #[test]
    fn read_batches_of_a_good_gzip_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        for i in 0..2500 {
            let bytes = RawDocumentBuf::from_document(&doc! {"_id": i})
                .unwrap()
                .into_bytes();
            encoder.write_all(&bytes).unwrap();
        }
        let path = dir.path().join("c.bson.gz");
        write(&path, &encoder.finish().unwrap());
        let (sender, mut receiver) = mpsc::channel(8);
        read_batches(&path, &sender);
        drop(sender);
        let mut sizes = Vec::new();
        while let Some(batch) = receiver.blocking_recv() {
            sizes.push(batch.unwrap().len());
        }
        assert_eq!(sizes, [1000, 1000, 500]);
    }
}
