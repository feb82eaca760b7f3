//! Per-collection checksums of a replica set's user data: what `backup create` records in the
//! manifest for every set, and what `backup verify --restore` computes again on the members of
//! a scratch cluster restored from the backup.
//!
//! A collection's checksum is its document count and a digest: the sum, modulo 2^256, of the
//! SHA-256 of every document's BSON. A sum does not depend on the order documents are read in,
//! on RocksDB's files or on how the documents were written, only on which documents there are
//! (two documents with one `_id` cannot exist, so nothing cancels out). Sums also add up: the
//! checksum of a collection over the whole cluster is the sum of its sets' checksums, which
//! tells "documents moved to another shard" apart from "documents changed or lost".
//!
//! Both sides read the documents with the same commands (`listDatabases`, `listCollections`,
//! `find`, `getMore`) through a [`Runner`]: the document engine opened read-only on the backup's
//! checkpoint, or a driver connected to a running member. So both see exactly what a client of
//! that member sees: the set's own orphans (a migration's copy not owned yet, a donor's copy not
//! deleted yet) are skipped by the engine on both sides, and the range deleter of the restored
//! cluster cannot make them differ. Each document is re-encoded from its decoded form, so the
//! bytes hashed are the same whichever way the document travelled.
//!
//! Only user data is covered: databases `admin`, `config` and `local`, `system.*` collections
//! and views are left out. A restore into a new cluster rewrites the config server's metadata
//! (new shard hosts, a new cluster id) and a running cluster keeps its own bookkeeping there;
//! the files' SHA-256 in the manifest already cover those bytes as backed up.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
};

use anyhow::Context as _;
use bson::{Bson, Document, doc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shoal_docstore::{Engine, RocksKv};

use super::store::hex;

/// Databases whose collections are not user data.
pub const INTERNAL_DATABASES: [&str; 3] = ["admin", "config", "local"];
/// The most collections one set's checksums may name (a bound on what a manifest makes us do).
pub const COLLECTIONS_PER_SET_MAX: usize = 100_000;
/// Documents asked for per `find`/`getMore` page (the engine also caps a page's bytes).
const PAGE_DOCS: i32 = 10_000;
/// Pages one cursor may return: a guard against a cursor that never ends, far above any real
/// collection (10^9 documents at one document per page would need a thousand times fewer).
const CURSOR_PAGES_MAX: u64 = 100_000_000;
/// Bytes of a SHA-256 (and of a digest).
const DIGEST_BYTES: usize = 32;

/// One collection's recorded checksum, as the manifest stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CollectionChecksum {
    /// `db.collection`.
    pub ns: String,
    /// Documents in it.
    pub documents: u64,
    /// The sum modulo 2^256 of the SHA-256 of each document's BSON, 64 lower-case hex digits
    /// (big-endian).
    pub digest: String,
}

/// A running checksum: a document count and a 256-bit sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    /// Documents added.
    pub documents: u64,
    /// The sum of their SHA-256, big-endian.
    sum: [u8; DIGEST_BYTES],
}

impl Checksum {
    /// Adds one document (its BSON as encoded from `document`).
    pub fn add_document(&mut self, document: &Document) -> anyhow::Result<()> {
        let bytes = bson::to_vec(document).context("cannot encode a document")?;
        self.add_bytes(&bytes);
        Ok(())
    }

    /// Adds one document given as BSON bytes.
    pub fn add_bytes(&mut self, bson: &[u8]) {
        let hash: [u8; DIGEST_BYTES] = Sha256::digest(bson).into();
        add_mod_2_256(&mut self.sum, &hash);
        self.documents = self.documents.saturating_add(1);
    }

    /// Adds another checksum (the same collection on another set).
    pub fn combine(&mut self, other: &Checksum) {
        add_mod_2_256(&mut self.sum, &other.sum);
        self.documents = self.documents.saturating_add(other.documents);
    }

    /// The digest as 64 hex digits.
    pub fn digest(&self) -> String {
        hex(&self.sum)
    }

    /// The checksum a manifest records, parsed back.
    pub fn from_recorded(recorded: &CollectionChecksum) -> Option<Checksum> {
        let digest = &recorded.digest;
        if digest.len() != DIGEST_BYTES * 2 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut sum = [0u8; DIGEST_BYTES];
        for (i, byte) in sum.iter_mut().enumerate() {
            *byte = u8::from_str_radix(digest.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Checksum {
            documents: recorded.documents,
            sum,
        })
    }

    /// The manifest's form, for collection `ns`.
    pub fn to_recorded(self, ns: &str) -> CollectionChecksum {
        CollectionChecksum {
            ns: ns.to_owned(),
            documents: self.documents,
            digest: self.digest(),
        }
    }
}

/// `sum += value` over 256-bit big-endian numbers, dropping the carry out of the top byte.
fn add_mod_2_256(sum: &mut [u8; DIGEST_BYTES], value: &[u8; DIGEST_BYTES]) {
    let mut carry = 0u16;
    for (target, byte) in sum.iter_mut().zip(value).rev() {
        let total = u16::from(*target) + u16::from(*byte) + carry;
        *target = total.to_le_bytes()[0];
        carry = total >> 8;
    }
}

/// Whether `db.coll` holds user data (see the module documentation).
pub fn is_user_collection(db: &str, coll: &str) -> bool {
    !INTERNAL_DATABASES.contains(&db) && !coll.starts_with("system.")
}

/// Runs one command on one member (or on an engine) and returns its successful reply; a reply
/// with `ok: 0` is an error.
pub trait Runner {
    /// Runs `command` against database `db`.
    fn run(
        &self,
        db: &str,
        command: Document,
    ) -> impl Future<Output = anyhow::Result<Document>> + Send;
}

/// A [`Runner`] over a document engine (a checkpoint opened read-only).
pub struct EngineRunner(pub Engine);

impl Runner for EngineRunner {
    fn run(
        &self,
        db: &str,
        command: Document,
    ) -> impl Future<Output = anyhow::Result<Document>> + Send {
        let name = command.keys().next().cloned().unwrap_or_default();
        let reply = self.0.execute(db, &command);
        async move { check_ok(reply, &name) }
    }
}

/// A [`Runner`] over a driver connected directly to one member.
pub struct ClientRunner(pub mongodb::Client);

impl Runner for ClientRunner {
    fn run(
        &self,
        db: &str,
        command: Document,
    ) -> impl Future<Output = anyhow::Result<Document>> + Send {
        let database = self.0.database(db);
        async move {
            let name = command.keys().next().cloned().unwrap_or_default();
            let reply = database
                .run_command(command)
                .await
                .with_context(|| format!("{name} failed"))?;
            check_ok(reply, &name)
        }
    }
}

/// The checksums of the checkpoint (a RocksDB directory) at `db_dir`, opened read-only: the
/// documents as of the checkpoint's applied log entry, which is what a restore of it holds.
/// Blocking.
pub fn checkpoint_checksums(db_dir: &Path) -> anyhow::Result<Vec<CollectionChecksum>> {
    let kv = RocksKv::open_read_only(db_dir)
        .with_context(|| format!("cannot open {} read-only", db_dir.display()))?;
    let engine = Engine::with_kv(Arc::new(kv))
        .with_context(|| format!("cannot read the catalog of {}", db_dir.display()))?;
    // The engine answers at once; nothing here waits on I/O readiness.
    futures::executor::block_on(set_checksums(&EngineRunner(engine)))
}

/// Fails unless `reply` says `ok: 1` (the engine answers errors as documents).
pub fn check_ok(reply: Document, what: &str) -> anyhow::Result<Document> {
    let ok = match reply.get("ok") {
        Some(Bson::Double(ok)) => *ok == 1.0,
        Some(Bson::Int32(ok)) => *ok == 1,
        Some(Bson::Int64(ok)) => *ok == 1,
        _ => false,
    };
    anyhow::ensure!(ok, "{what} failed: {reply}");
    Ok(reply)
}

/// The checksum of every user collection the member behind `runner` serves, sorted by
/// namespace.
pub async fn set_checksums<R: Runner>(runner: &R) -> anyhow::Result<Vec<CollectionChecksum>> {
    let mut checksums = Vec::new();
    for db in user_databases(runner).await? {
        for coll in user_collections(runner, &db).await? {
            anyhow::ensure!(
                checksums.len() < COLLECTIONS_PER_SET_MAX,
                "more than {COLLECTIONS_PER_SET_MAX} collections"
            );
            let checksum = collection_checksum(runner, &db, &coll)
                .await
                .with_context(|| format!("cannot read {db}.{coll}"))?;
            checksums.push(checksum.to_recorded(&format!("{db}.{coll}")));
        }
    }
    checksums.sort_by(|a, b| a.ns.cmp(&b.ns));
    Ok(checksums)
}

async fn user_databases<R: Runner>(runner: &R) -> anyhow::Result<Vec<String>> {
    let reply = runner
        .run("admin", doc! {"listDatabases": 1, "nameOnly": true})
        .await?;
    let mut names = BTreeSet::new();
    for entry in reply
        .get_array("databases")
        .context("listDatabases reply")?
    {
        let name = entry
            .as_document()
            .and_then(|entry| entry.get_str("name").ok())
            .with_context(|| format!("a listDatabases entry without a name: {entry}"))?;
        if !INTERNAL_DATABASES.contains(&name) {
            names.insert(name.to_owned());
        }
    }
    Ok(names.into_iter().collect())
}

async fn user_collections<R: Runner>(runner: &R, db: &str) -> anyhow::Result<Vec<String>> {
    let command = doc! {"listCollections": 1, "cursor": {"batchSize": PAGE_DOCS}};
    let mut names = BTreeSet::new();
    let mut collect = |entry: Document| {
        let is_collection = entry.get_str("type").is_ok_and(|t| t == "collection");
        if let Ok(name) = entry.get_str("name")
            && is_collection
            && is_user_collection(db, name)
        {
            names.insert(name.to_owned());
        }
        Ok(())
    };
    drain(runner, db, command, "$cmd.listCollections", &mut collect).await?;
    Ok(names.into_iter().collect())
}

/// The checksum of `db.coll` as a `find` without a filter returns it.
pub async fn collection_checksum<R: Runner>(
    runner: &R,
    db: &str,
    coll: &str,
) -> anyhow::Result<Checksum> {
    let mut checksum = Checksum::default();
    let command = doc! {"find": coll, "filter": {}, "batchSize": PAGE_DOCS};
    drain(runner, db, command, coll, &mut |document| {
        checksum.add_document(&document)
    })
    .await?;
    Ok(checksum)
}

/// Runs a cursor command and its `getMore`s to the end, passing each document to `each`.
async fn drain<R: Runner>(
    runner: &R,
    db: &str,
    command: Document,
    coll: &str,
    each: &mut dyn FnMut(Document) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut reply = runner.run(db, command).await?;
    let mut batch_field = "firstBatch";
    for _ in 0..CURSOR_PAGES_MAX {
        let cursor = reply
            .get_document("cursor")
            .with_context(|| format!("a reply without a cursor: {reply}"))?;
        for entry in cursor.get_array(batch_field).context("cursor batch")? {
            let document = entry
                .as_document()
                .with_context(|| format!("a cursor returned {entry}, not a document"))?;
            each(document.clone())?;
        }
        let id = cursor.get_i64("id").context("cursor id")?;
        if id == 0 {
            return Ok(());
        }
        let more = doc! {"getMore": id, "collection": coll, "batchSize": PAGE_DOCS};
        reply = runner.run(db, more).await?;
        batch_field = "nextBatch";
    }
    anyhow::bail!("a cursor on {db}.{coll} returned more than {CURSOR_PAGES_MAX} pages")
}

/// How one set's checksum of one collection compares with the backup's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Equal.
    Match,
    /// Different on this set, but the collection summed over every set matches: documents
    /// changed owner (a migration was committing while the sets were checkpointed).
    Moved,
    /// Different, and the collection as a whole differs too.
    Mismatch,
}

/// One line of the comparison: a set's collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The set.
    pub set: String,
    /// `db.collection`.
    pub ns: String,
    /// The checksum the backup recorded (empty when it recorded none for this collection).
    pub recorded: Checksum,
    /// The checksum the restored set has.
    pub restored: Checksum,
    /// The verdict.
    pub status: Status,
}

/// The whole comparison of a backup with its restore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// One line per set and collection, in set order then namespace order.
    pub lines: Vec<Line>,
    /// Sets whose manifest entry records no collection checksums (older backups).
    pub unrecorded_sets: Vec<String>,
    /// Sets with no user collection on either side (the config server's).
    pub empty_sets: Vec<String>,
    /// Recorded checksums that cannot be parsed: (set, ns).
    pub malformed: Vec<(String, String)>,
}

impl Comparison {
    /// Whether every recorded checksum matched (or only moved between sets), with nothing
    /// unrecorded or malformed.
    pub fn is_ok(&self) -> bool {
        self.unrecorded_sets.is_empty()
            && self.malformed.is_empty()
            && self
                .lines
                .iter()
                .all(|line| line.status != Status::Mismatch)
    }

    /// Lines that differ.
    pub fn mismatches(&self) -> usize {
        self.lines
            .iter()
            .filter(|line| line.status == Status::Mismatch)
            .count()
    }
}

/// One set's checksums: its name and, when known, its collections.
pub type SetChecksums = (String, Option<Vec<CollectionChecksum>>);

/// A set's collections: namespace -> (recorded, restored).
type Row = BTreeMap<String, (Checksum, Checksum)>;

/// Compares what the backup recorded for each set (`recorded`, in manifest order) with what
/// the restored sets hold (`restored`). A collection a side does not list counts as empty, so
/// an empty collection that exists on one side only is not a difference.
pub fn compare(
    recorded: &[SetChecksums],
    restored: &[(String, Vec<CollectionChecksum>)],
) -> Comparison {
    let mut comparison = Comparison::default();
    let mut rows: Vec<(String, Row)> = Vec::new();
    for (set, collections) in recorded {
        let Some(collections) = collections else {
            comparison.unrecorded_sets.push(set.clone());
            continue;
        };
        let observed = restored
            .iter()
            .find(|(name, _)| name == set)
            .map(|(_, observed)| observed.as_slice())
            .unwrap_or_default();
        let row = row_of(set, collections, observed, &mut comparison.malformed);
        if row.is_empty() {
            comparison.empty_sets.push(set.clone());
        }
        rows.push((set.clone(), row));
    }
    let totals = totals(&rows);
    for (set, row) in rows {
        for (ns, (recorded, restored)) in row {
            let status = if recorded == restored {
                Status::Match
            } else if totals.get(&ns).is_some_and(|(r, o)| r == o) {
                Status::Moved
            } else {
                Status::Mismatch
            };
            comparison.lines.push(Line {
                set: set.clone(),
                ns,
                recorded,
                restored,
                status,
            });
        }
    }
    comparison
}

/// One set's row: every recorded collection, and every restored one holding documents.
fn row_of(
    set: &str,
    recorded: &[CollectionChecksum],
    restored: &[CollectionChecksum],
    malformed: &mut Vec<(String, String)>,
) -> Row {
    let mut row = Row::new();
    for collection in recorded {
        match Checksum::from_recorded(collection) {
            Some(checksum) => {
                row.insert(collection.ns.clone(), (checksum, Checksum::default()));
            }
            None => malformed.push((set.to_owned(), collection.ns.clone())),
        }
    }
    for collection in restored {
        let Some(checksum) = Checksum::from_recorded(collection) else {
            continue;
        };
        if checksum.documents == 0 && !row.contains_key(&collection.ns) {
            continue;
        }
        row.entry(collection.ns.clone()).or_default().1 = checksum;
    }
    row
}

/// Each collection summed over every set: (recorded, restored).
fn totals(rows: &[(String, Row)]) -> Row {
    let mut totals = Row::new();
    for (_, row) in rows {
        for (ns, (recorded, restored)) in row {
            let total = totals.entry(ns.clone()).or_default();
            total.0.combine(recorded);
            total.1.combine(restored);
        }
    }
    totals
}

/// The lines `verify --restore` prints for `comparison` (one per set and collection, then the
/// sets without checksums).
pub fn comparison_lines(comparison: &Comparison) -> Vec<String> {
    let mut lines: Vec<String> = comparison.lines.iter().map(line_text).collect();
    for set in &comparison.empty_sets {
        lines.push(format!("set {set}: no user collections"));
    }
    for (set, ns) in &comparison.malformed {
        lines.push(format!(
            "set {set}, {ns}: the manifest's checksum is malformed"
        ));
    }
    for set in &comparison.unrecorded_sets {
        lines.push(format!(
            "set {set}: the backup records no collection checksums (it was made by an older \
             shoal); its contents cannot be compared"
        ));
    }
    lines
}

fn line_text(line: &Line) -> String {
    let (recorded, restored) = (&line.recorded, &line.restored);
    let head = format!("set {}, {}", line.set, line.ns);
    match line.status {
        Status::Match => format!(
            "{head}: ok ({} documents, digest {})",
            recorded.documents,
            short(&recorded.digest())
        ),
        Status::Moved => format!(
            "{head}: ok, moved ({} documents in the backup, {} restored: they changed shard, \
             the collection as a whole matches; a migration was committing during the backup)",
            recorded.documents, restored.documents
        ),
        Status::Mismatch => format!(
            "{head}: MISMATCH: the backup recorded {} documents, digest {}; the restored set \
             holds {} documents, digest {}",
            recorded.documents,
            recorded.digest(),
            restored.documents,
            restored.digest()
        ),
    }
}

/// The first 16 hex digits of a digest, enough for a human to compare two lines.
fn short(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_of(documents: &[Document]) -> Checksum {
        let mut checksum = Checksum::default();
        for document in documents {
            checksum.add_document(document).unwrap();
        }
        checksum
    }

    fn recorded(ns: &str, documents: &[Document]) -> CollectionChecksum {
        checksum_of(documents).to_recorded(ns)
    }

    #[test]
    fn the_digest_depends_on_the_documents_not_their_order() {
        let a = doc! {"_id": 1, "x": "a"};
        let b = doc! {"_id": 2, "x": "b"};
        let forward = checksum_of(&[a.clone(), b.clone()]);
        let backward = checksum_of(&[b.clone(), a.clone()]);
        assert_eq!(forward, backward);
        assert_eq!(forward.documents, 2);
        let changed = checksum_of(&[a.clone(), doc! {"_id": 2, "x": "c"}]);
        assert_ne!(forward.digest(), changed.digest());
        // Field order is part of a document, as in BSON.
        let reordered = checksum_of(&[a, doc! {"x": "b", "_id": 2}]);
        assert_ne!(forward.digest(), reordered.digest());
        assert_eq!(Checksum::default().digest(), "0".repeat(64));
    }

    #[test]
    fn sums_carry_and_wrap_modulo_2_256() {
        let mut sum = [0xffu8; DIGEST_BYTES];
        let mut one = [0u8; DIGEST_BYTES];
        one[DIGEST_BYTES - 1] = 1;
        add_mod_2_256(&mut sum, &one);
        assert_eq!(sum, [0u8; DIGEST_BYTES]);
        let mut low = [0u8; DIGEST_BYTES];
        low[DIGEST_BYTES - 1] = 0xff;
        add_mod_2_256(&mut low, &one);
        assert_eq!(low[DIGEST_BYTES - 2..], [1, 0]);
    }

    #[test]
    fn set_checksums_add_up_to_the_collections() {
        let docs: Vec<Document> = (0..10).map(|i| doc! {"_id": i}).collect();
        let mut split = checksum_of(&docs[..4]);
        split.combine(&checksum_of(&docs[4..]));
        assert_eq!(split, checksum_of(&docs));
    }

    #[test]
    fn recorded_checksums_round_trip_and_malformed_ones_are_refused() {
        let original = checksum_of(&[doc! {"_id": 1}]);
        let recorded = original.to_recorded("app.c");
        assert_eq!(Checksum::from_recorded(&recorded), Some(original));
        for bad in ["", "zz", &"0".repeat(63), &"g".repeat(64)] {
            let mut broken = recorded.clone();
            broken.digest = bad.to_owned();
            assert_eq!(Checksum::from_recorded(&broken), None, "{bad:?}");
        }
        let json = serde_json::to_string(&recorded).unwrap();
        assert!(json.contains(r#""documents":1"#), "{json}");
    }

    #[test]
    fn internal_databases_and_system_collections_are_not_user_data() {
        assert!(is_user_collection("app", "items"));
        assert!(!is_user_collection("config", "chunks"));
        assert!(!is_user_collection("admin", "users"));
        assert!(!is_user_collection("local", "oplog.rs"));
        assert!(!is_user_collection("app", "system.views"));
    }

    #[test]
    fn an_engine_is_read_collection_by_collection_across_pages() {
        let engine = Engine::with_kv(Arc::new(shoal_docstore::MemKv::new())).unwrap();
        // More than one page of `find`, so getMore is exercised.
        let many: Vec<Document> = (0..PAGE_DOCS + 500).map(|i| doc! {"_id": i}).collect();
        for batch in many.chunks(1000) {
            let reply = engine.execute("app", &doc! {"insert": "many", "documents": batch});
            assert_eq!(reply.get_f64("ok"), Ok(1.0), "{reply}");
        }
        let few = vec![
            doc! {"_id": "a", "x": [1, 2]},
            doc! {"_id": "b", "y": {"z": 1.5}},
        ];
        for (db, coll) in [
            ("app", "few"),
            ("config", "chunks"),
            ("admin", "x"),
            ("app", "system.js"),
        ] {
            let reply = engine.execute(db, &doc! {"insert": coll, "documents": few.clone()});
            assert_eq!(reply.get_f64("ok"), Ok(1.0), "{reply}");
        }
        let checksums = futures::executor::block_on(set_checksums(&EngineRunner(engine))).unwrap();
        let names: Vec<&str> = checksums.iter().map(|c| c.ns.as_str()).collect();
        assert_eq!(names, ["app.few", "app.many"]);
        assert_eq!(checksums[0], checksum_of(&few).to_recorded("app.few"));
        assert_eq!(checksums[1], checksum_of(&many).to_recorded("app.many"));
    }

    fn docs(ids: std::ops::Range<i32>) -> Vec<Document> {
        ids.map(|i| doc! {"_id": i, "k": i}).collect()
    }

    #[test]
    fn an_intact_restore_matches_line_by_line() {
        let recorded_sets = vec![
            ("cfg".to_owned(), Some(vec![])),
            (
                "s0".to_owned(),
                Some(vec![
                    recorded("app.a", &docs(0..5)),
                    recorded("app.b", &docs(0..3)),
                ]),
            ),
            ("s1".to_owned(), Some(vec![recorded("app.a", &docs(5..9))])),
        ];
        // The restored side also lists an empty collection the backup did not record.
        let restored = vec![
            ("cfg".to_owned(), vec![]),
            (
                "s0".to_owned(),
                vec![
                    recorded("app.a", &docs(0..5)),
                    recorded("app.b", &docs(0..3)),
                ],
            ),
            (
                "s1".to_owned(),
                vec![recorded("app.a", &docs(5..9)), recorded("app.b", &[])],
            ),
        ];
        let comparison = compare(&recorded_sets, &restored);
        assert!(comparison.is_ok(), "{comparison:?}");
        let lines = comparison_lines(&comparison);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[3], "set cfg: no user collections");
        assert!(lines[0].starts_with("set s0, app.a: ok (5 documents, digest "));
        assert!(lines[2].starts_with("set s1, app.a: ok (4 documents"));
    }

    #[test]
    fn a_changed_collection_is_named_with_both_values() {
        let recorded_sets = vec![
            ("s0".to_owned(), Some(vec![recorded("app.a", &docs(0..5))])),
            ("s1".to_owned(), Some(vec![recorded("app.a", &docs(5..9))])),
        ];
        let mut lost = docs(5..9);
        lost.pop();
        let restored = vec![
            ("s0".to_owned(), vec![recorded("app.a", &docs(0..5))]),
            ("s1".to_owned(), vec![recorded("app.a", &lost)]),
        ];
        let comparison = compare(&recorded_sets, &restored);
        assert!(!comparison.is_ok());
        assert_eq!(comparison.mismatches(), 1);
        let lines = comparison_lines(&comparison);
        let bad = &lines[1];
        assert!(bad.starts_with("set s1, app.a: MISMATCH"), "{bad}");
        assert!(bad.contains("recorded 4 documents"), "{bad}");
        assert!(bad.contains("holds 3 documents"), "{bad}");
        assert!(bad.contains(&checksum_of(&lost).digest()), "{bad}");
        assert!(lines[0].contains(": ok ("), "{}", lines[0]);
        // A collection missing from the restore altogether counts as empty.
        let gone = vec![("s0".to_owned(), vec![]), ("s1".to_owned(), vec![])];
        let comparison = compare(&recorded_sets, &gone);
        assert_eq!(comparison.mismatches(), 2);
    }

    #[test]
    fn documents_that_changed_shard_are_not_a_mismatch() {
        let recorded_sets = vec![
            ("s0".to_owned(), Some(vec![recorded("app.a", &docs(0..6))])),
            ("s1".to_owned(), Some(vec![recorded("app.a", &docs(6..9))])),
        ];
        let restored = vec![
            ("s0".to_owned(), vec![recorded("app.a", &docs(0..4))]),
            ("s1".to_owned(), vec![recorded("app.a", &docs(4..9))]),
        ];
        let comparison = compare(&recorded_sets, &restored);
        assert!(comparison.is_ok(), "{comparison:?}");
        assert!(comparison.lines.iter().all(|l| l.status == Status::Moved));
        assert!(comparison_lines(&comparison)[0].contains("ok, moved (6 documents"));
    }

    #[test]
    fn backups_without_checksums_cannot_pass() {
        let recorded_sets = vec![("s0".to_owned(), None)];
        let restored = vec![("s0".to_owned(), vec![recorded("app.a", &docs(0..2))])];
        let comparison = compare(&recorded_sets, &restored);
        assert!(!comparison.is_ok());
        let lines = comparison_lines(&comparison);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("records no collection checksums"),
            "{lines:?}"
        );
        let mut malformed = recorded("app.a", &docs(0..2));
        malformed.digest = "x".to_owned();
        let comparison = compare(&[("s0".to_owned(), Some(vec![malformed]))], &restored);
        assert!(!comparison.is_ok());
        assert_eq!(
            comparison.malformed,
            [("s0".to_owned(), "app.a".to_owned())]
        );
    }
}
