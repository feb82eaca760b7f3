//! `shoal dump`: reads every selected collection through the router and writes mongodump's
//! layout (see [`super::layout`]). Each collection is one cursor sorted by `_id` over the live
//! collection: the dump of a collection is consistent only with itself, and only as far as a
//! cursor is (a document updated during the dump may appear as of any moment of the dump).
//! There is no point-in-time snapshot across collections.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use bson::{Document, RawDocumentBuf, doc};
use flate2::{Compression, write::GzEncoder};
use futures::TryStreamExt as _;
use mongodb::{Client, Collection, Database};

use super::{
    connect,
    layout::{self, Selection},
    metadata::{CollectionMetadata, shard_key_of},
    progress::{CollectionProgress, Reporter},
};

/// Documents per cursor batch: large enough to amortise round trips, small enough to bound the
/// memory of one batch (16 MiB documents aside).
const BATCH_DOCS: u32 = 1000;
/// The write buffer in front of each file.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;
/// What an unfinished file is called until its last byte is written, so an interrupted dump
/// never leaves a complete-looking `.bson` behind.
const PARTIAL_SUFFIX: &str = ".partial";

/// What to dump and where.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Connection string of the router.
    pub uri: String,
    /// The dump directory (created if missing).
    pub out: PathBuf,
    /// Which databases and collections.
    pub selection: Selection,
    /// Whether to gzip every file.
    pub gzip: bool,
}

/// What a dump wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpSummary {
    /// Collections dumped.
    pub collections: usize,
    /// Documents written.
    pub documents: u64,
}

/// One collection to dump, from `listCollections`.
#[derive(Debug)]
struct CollectionInfo {
    name: String,
    options: Document,
}

/// Runs `shoal dump`; see the module documentation.
pub async fn run(options: &DumpOptions, reporter: Reporter) -> anyhow::Result<DumpSummary> {
    let client = connect(&options.uri, "shoal dump").await?;
    let mut summary = DumpSummary::default();
    for db in databases(&client, &options.selection).await? {
        for info in collections(&client.database(&db), &options.selection).await? {
            let documents = dump_collection(&client, &db, &info, options, reporter)
                .await
                .with_context(|| format!("cannot dump {db}.{}", info.name))?;
            summary.collections += 1;
            summary.documents += documents;
        }
    }
    if summary.collections == 0 && options.selection.db().is_some() {
        anyhow::bail!(
            "nothing to dump: {} has no collections",
            options.selection.describe()
        );
    }
    Ok(summary)
}

/// The selected databases: the one named, or every database the router lists.
async fn databases(client: &Client, selection: &Selection) -> anyhow::Result<Vec<String>> {
    if let Some(db) = selection.db() {
        return Ok(vec![db.to_owned()]);
    }
    let mut names = client
        .list_database_names()
        .await
        .context("listDatabases failed")?;
    names.retain(|name| selection.includes_db(name));
    names.sort();
    Ok(names)
}

/// The selected collections of `db`, by name, with their options.
async fn collections(db: &Database, selection: &Selection) -> anyhow::Result<Vec<CollectionInfo>> {
    let entries: Vec<Document> = db
        .run_cursor_command(doc! {"listCollections": 1})
        .await
        .with_context(|| format!("listCollections on {} failed", db.name()))?
        .try_collect()
        .await
        .with_context(|| format!("listCollections on {} failed", db.name()))?;
    let mut infos = Vec::new();
    for entry in entries {
        let name = entry
            .get_str("name")
            .with_context(|| format!("listCollections on {} answered {entry}", db.name()))?;
        if !selection.includes(db.name(), name) {
            continue;
        }
        if entry.get_str("type").is_ok_and(|kind| kind != "collection") {
            tracing::warn!(db = db.name(), name, "skipping: not a collection");
            continue;
        }
        let options = entry.get_document("options").cloned().unwrap_or_default();
        infos.push(CollectionInfo {
            name: name.to_owned(),
            options,
        });
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

/// Dumps one collection: metadata first, then the documents. Returns the documents written.
async fn dump_collection(
    client: &Client,
    db: &str,
    info: &CollectionInfo,
    options: &DumpOptions,
    reporter: Reporter,
) -> anyhow::Result<u64> {
    let ns = format!("{db}.{}", info.name);
    let dir = options.out.join(db);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let metadata = read_metadata(client, db, info).await?;
    let metadata_path = dir.join(layout::metadata_file_name(&info.name, options.gzip));
    write_file(&metadata_path, options.gzip, |sink| {
        sink.write_all(metadata.to_json().as_bytes())
    })?;

    let collection = client.database(db).collection::<RawDocumentBuf>(&info.name);
    let total = collection.estimated_document_count().await.ok();
    let bson_path = dir.join(layout::bson_file_name(&info.name, options.gzip));
    let mut progress = reporter.start("dumped", &ns, total);
    let result = write_documents(&collection, &bson_path, options.gzip, &mut progress).await;
    let documents = progress.docs();
    match result {
        Ok(()) => progress.finish(),
        Err(error) => {
            progress.abandon();
            return Err(error);
        }
    }
    Ok(documents)
}

/// Writes the collection's documents, sorted by `_id`, to `path` (as `path.partial` until the
/// last byte is written and synced).
async fn write_documents(
    collection: &Collection<RawDocumentBuf>,
    path: &Path,
    gzip: bool,
    progress: &mut CollectionProgress,
) -> anyhow::Result<()> {
    let ns = collection.namespace();
    let mut cursor = collection
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .batch_size(BATCH_DOCS)
        .await
        .with_context(|| format!("find on {ns} failed"))?;
    let partial = partial_path(path);
    let mut sink = Sink::create(&partial, gzip)?;
    // Writes are buffered and small next to a batch's network round trip; this task is the
    // only user of the runtime, so blocking it briefly delays nothing else.
    while let Some(document) = cursor
        .try_next()
        .await
        .with_context(|| format!("reading {ns} failed"))?
    {
        sink.write_all(document.as_bytes())
            .with_context(|| format!("cannot write {}", partial.display()))?;
        progress.add(1);
    }
    sink.finish()
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))
}

/// Options, indexes and shard key of one collection.
async fn read_metadata(
    client: &Client,
    db: &str,
    info: &CollectionInfo,
) -> anyhow::Result<CollectionMetadata> {
    let ns = format!("{db}.{}", info.name);
    let indexes: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! {"listIndexes": &info.name})
        .await
        .with_context(|| format!("listIndexes on {ns} failed"))?
        .try_collect()
        .await
        .with_context(|| format!("listIndexes on {ns} failed"))?;
    let entry = client
        .database("config")
        .collection::<Document>("collections")
        .find_one(doc! {"_id": &ns})
        .await
        .with_context(|| format!("cannot read config.collections for {ns}"))?;
    let (shard_key, shard_key_unique) = shard_key_of(entry.as_ref());
    Ok(CollectionMetadata {
        collection_name: info.name.clone(),
        indexes,
        options: info.options.clone(),
        shard_key,
        shard_key_unique,
    })
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PARTIAL_SUFFIX);
    PathBuf::from(name)
}

/// Writes a whole small file (metadata) through a [`Sink`].
fn write_file(
    path: &Path,
    gzip: bool,
    write: impl FnOnce(&mut Sink) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut sink = Sink::create(path, gzip)?;
    write(&mut sink)
        .and_then(|()| sink.finish())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A dump file being written, plain or gzipped. [`Sink::finish`] must be called: it writes the
/// gzip trailer and syncs the file, and reports the errors a drop would swallow.
enum Sink {
    Plain(BufWriter<File>),
    Gzip(GzEncoder<BufWriter<File>>),
}

impl Sink {
    fn create(path: &Path, gzip: bool) -> anyhow::Result<Sink> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let buffered = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        Ok(if gzip {
            Sink::Gzip(GzEncoder::new(buffered, Compression::default()))
        } else {
            Sink::Plain(buffered)
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(writer) => writer.write_all(bytes),
            Sink::Gzip(writer) => writer.write_all(bytes),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        let buffered = match self {
            Sink::Plain(writer) => writer,
            Sink::Gzip(writer) => writer.finish()?,
        };
        let file = buffered.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use flate2::read::MultiGzDecoder;

    use super::*;

    #[test]
    fn sinks_write_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        for gzip in [false, true] {
            let path = dir.path().join(format!("f{gzip}"));
            write_file(&path, gzip, |sink| {
                sink.write_all(b"hello ")?;
                sink.write_all(b"world")
            })
            .unwrap();
            let raw = std::fs::read(&path).unwrap();
            let text = if gzip {
                let mut text = Vec::new();
                MultiGzDecoder::new(raw.as_slice())
                    .read_to_end(&mut text)
                    .unwrap();
                text
            } else {
                raw
            };
            assert_eq!(text, b"hello world");
        }
    }

    #[test]
    fn partial_names() {
        assert_eq!(
            partial_path(Path::new("/d/db/c.bson.gz")),
            PathBuf::from("/d/db/c.bson.gz.partial")
        );
    }
}
