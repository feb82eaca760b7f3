//! The oplog archive: `shoal backup archive` copies every replica set's applied log entries into
//! the store, continuously, so that a restore can replay them onto a backup up to any time
//! (point-in-time recovery, [`super::pitr`]).
//!
//! # Layout (inside the store)
//!
//! ```text
//! archive/<cluster id>/<set>/segments/<first>-<last>.json   one segment: entries first..=last
//! archive/<cluster id>/<set>/progress.json                  how far the archive is complete
//! objects/<sha256>                                          a segment's entries (BSON sequence)
//! ```
//!
//! - A segment's entries are stored as one object, a sequence of `{i, t, e}` documents (index,
//!   proposal time, the entry as the log stores it); the segment record names the object and its
//!   SHA-256, so `verify` and restores check it like a backup file. An entry larger than
//!   [`OPLOG_PART_BYTES`] (no BSON binary may pass 16 MB) is stored as `{i, t, e, n}` (its first
//!   part and the number of parts) followed by `{i, p, e}` for parts 1..n; such an entry is read
//!   from the member in parts too, and always makes a segment of its own.
//! - Order of writes: object (synced, renamed), then segment record (renamed), then progress.
//!   A crash leaves at worst a segment not yet counted in the progress; the next round starts
//!   from the progress and rewrites that segment identically (same entries, same object).
//! - `progress.json` holds the last archived index and `asOfMillis`: the time the archiver
//!   asked the set's primary for entries and received everything it had applied. A write
//!   acknowledged before that time was applied on the primary before it answered, so it is in
//!   the archive: a restore to T needs `asOfMillis >= T` (or an archived write at or after T).
//! - Entries are read from the primary (any member's applied entries are committed, but only the
//!   primary's applied index bounds what was acknowledged), one page after another.
//! - If log purging outran the archiver (a set wrote more than its retained log between two
//!   rounds) the archive records a gap and continues where the log resumes; no restore crosses a
//!   gap, and `shoal backup list` says so. A backup taken after the gap starts a new range.
//! - The directory is keyed by the cluster id, and a restore gives the new cluster a new one, so
//!   a restored cluster archiving into the same store never mixes its history with the original.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use bson::{Bson, Document, doc, spec::BinarySubtype};
use chrono::Utc;
use mongodb::Client;
use serde::{Deserialize, Serialize};
use shoal_repl::archive::{ArchivedEntry, LargeEntry, OPLOG_ENTRY_BYTES_MAX, OPLOG_PART_BYTES};

use super::{
    create::{SetTarget, cluster_id, direct_client, hello, set_targets},
    manifest::object_name,
    store::Store,
};
use crate::backup::connect;

/// The archive's directory inside a store.
pub const ARCHIVE_DIR: &str = "archive";
const SEGMENTS_DIR: &str = "segments";
const PROGRESS_FILE: &str = "progress.json";
/// Pages read from one set per round, so one busy set cannot starve the others.
pub const PAGES_PER_ROUND_MAX: usize = 64;
/// Segments one set's archive may hold (a listing larger than this is refused rather than read).
pub const SEGMENTS_PER_SET_MAX: usize = 10_000_000;
/// Members of one set probed with `hello` to find its primary.
const MEMBERS_PROBED_MAX: usize = 50;
/// How long one `_shoalOplogRead` may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One stored segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    /// The set.
    pub set: String,
    /// Its first entry's index.
    pub first: u64,
    /// Its last entry's index.
    pub last: u64,
    /// The proposal time of its first write (ms), if it has one.
    pub first_time_millis: Option<i64>,
    /// The proposal time of its last write (ms), if it has one.
    pub last_time_millis: Option<i64>,
    /// The object holding the entries (`objects/<sha256>`).
    pub object: String,
    /// The object's size.
    pub size: u64,
    /// The object's SHA-256.
    pub sha256: String,
}

/// A place where the archive lost entries to log purging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    /// The last index archived before the gap.
    pub after: u64,
    /// The first index archived after it.
    pub resumed: u64,
}

/// How far one set's archive is complete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The last archived index (0: none).
    pub last: u64,
    /// Every write acknowledged before this time (ms) is archived (0: never caught up).
    pub as_of_millis: i64,
    /// Where entries were lost to purging.
    pub gaps: Vec<Gap>,
}

/// One set's archive directory.
#[derive(Clone, Debug)]
pub struct SetArchive {
    set: String,
    dir: PathBuf,
}

impl SetArchive {
    /// The archive of `set` of cluster `cluster` in `store` (not created until written).
    pub fn new(store: &Store, cluster: &str, set: &str) -> SetArchive {
        SetArchive {
            set: set.to_owned(),
            dir: store.root().join(ARCHIVE_DIR).join(cluster).join(set),
        }
    }

    /// The progress record (the default when the set was never archived).
    pub fn progress(&self) -> anyhow::Result<Progress> {
        let path = self.dir.join(PROGRESS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not a progress record", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Progress::default()),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn write_json(&self, path: &Path, json: &str) -> anyhow::Result<()> {
        let parent = path.parent().context("an archive file has no directory")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::File::open(&tmp).and_then(|file| file.sync_all()))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} into place", tmp.display()))
    }

    fn write_progress(&self, progress: &Progress) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(progress)?;
        self.write_json(&self.dir.join(PROGRESS_FILE), &json)
    }

    /// Stores `entries` (consecutive, non-empty) as one segment.
    pub fn write_segment(
        &self,
        store: &Store,
        entries: &[ArchivedEntry],
    ) -> anyhow::Result<Segment> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            anyhow::bail!("a segment needs entries");
        };
        let mut bytes = Vec::new();
        for entry in entries {
            let binary = |part: &[u8]| {
                Bson::Binary(bson::Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: part.to_vec(),
                })
            };
            let index = i64::try_from(entry.index)?;
            let mut parts = entry.bytes.chunks(OPLOG_PART_BYTES);
            let first = parts.next().unwrap_or_default();
            let mut head = doc! {
                "i": index,
                "t": entry.time_millis.map_or(Bson::Null, Bson::Int64),
                "e": binary(first),
            };
            let count = entry.bytes.len().div_ceil(OPLOG_PART_BYTES);
            if count > 1 {
                head.insert("n", i64::try_from(count)?);
            }
            head.to_writer(&mut bytes)?;
            for (number, part) in parts.enumerate() {
                let number = i64::try_from(number + 1)?;
                doc! {"i": index, "p": number, "e": binary(part)}.to_writer(&mut bytes)?;
            }
        }
        let sha256 = store.put_bytes(&bytes)?;
        let segment = Segment {
            set: self.set.clone(),
            first: first.index,
            last: last.index,
            first_time_millis: entries.iter().find_map(|e| e.time_millis),
            last_time_millis: entries.iter().rev().find_map(|e| e.time_millis),
            object: object_name(&sha256),
            size: bytes.len() as u64,
            sha256,
        };
        let name = format!("{:020}-{:020}.json", segment.first, segment.last);
        let json = serde_json::to_string_pretty(&segment)?;
        self.write_json(&self.dir.join(SEGMENTS_DIR).join(name), &json)?;
        Ok(segment)
    }

    /// Every segment record, by first index.
    pub fn segments(&self) -> anyhow::Result<Vec<Segment>> {
        let dir = self.dir.join(SEGMENTS_DIR);
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot list {}", dir.display()));
            }
        };
        let mut segments = Vec::new();
        for entry in listing {
            let path = entry
                .with_context(|| format!("cannot list {}", dir.display()))?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            anyhow::ensure!(
                segments.len() < SEGMENTS_PER_SET_MAX,
                "{} holds more than {SEGMENTS_PER_SET_MAX} segments",
                dir.display()
            );
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let segment: Segment = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a segment record", path.display()))?;
            segments.push(segment);
        }
        segments.sort_by_key(|segment| (segment.first, segment.last));
        Ok(segments)
    }

    /// A segment's entries, checked against its SHA-256 and its index range.
    pub fn read_segment(
        &self,
        store: &Store,
        segment: &Segment,
    ) -> anyhow::Result<Vec<ArchivedEntry>> {
        let bytes = store.read_object(&segment.object, &segment.sha256)?;
        let mut entries = Vec::new();
        let mut rest = bytes.as_slice();
        let next = |rest: &mut &[u8]| {
            Document::from_reader(rest).with_context(|| {
                format!(
                    "segment {} of set {} does not decode",
                    segment.object, self.set
                )
            })
        };
        let part_bytes = |document: &Document| match document.get("e") {
            Some(Bson::Binary(binary)) => Ok(binary.bytes.clone()),
            _ => Err(anyhow::anyhow!(
                "segment {} has an entry without bytes",
                segment.object
            )),
        };
        while !rest.is_empty() {
            let document = next(&mut rest)?;
            let index = u64::try_from(document.get_i64("i")?)?;
            let mut bytes = part_bytes(&document)?;
            let parts = document.get_i64("n").unwrap_or(1);
            anyhow::ensure!(
                (1..=max_parts()).contains(&parts),
                "segment {} declares {parts} parts for entry {index}",
                segment.object
            );
            for number in 1..parts {
                let part = next(&mut rest)?;
                anyhow::ensure!(
                    part.get_i64("i").ok() == i64::try_from(index).ok()
                        && part.get_i64("p").ok() == Some(number),
                    "segment {} lacks part {number} of entry {index}",
                    segment.object
                );
                bytes.extend_from_slice(&part_bytes(&part)?);
            }
            entries.push(ArchivedEntry::from_stored(index, bytes)?);
        }
        let indexes_ok = entries.first().map(|e| e.index) == Some(segment.first)
            && entries.last().map(|e| e.index) == Some(segment.last)
            && entries.windows(2).all(|w| w[1].index == w[0].index + 1);
        anyhow::ensure!(
            indexes_ok,
            "segment {} of set {} does not hold entries {}..={}",
            segment.object,
            self.set,
            segment.first,
            segment.last
        );
        Ok(entries)
    }
}

/// What `shoal backup archive` is asked to do.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// Connection string of the router.
    pub uri: String,
    /// The store directory (created if missing).
    pub store: PathBuf,
    /// The config server's `NAME/HOST:PORT,...` when the router's command line does not say.
    pub config: Option<String>,
    /// Time between rounds.
    pub interval: Duration,
    /// Rounds to run (`None`: until stopped).
    pub rounds: Option<u64>,
}

/// Runs the archiver: a round over every set, then a pause, until `rounds` are done or the
/// process is stopped. A set that fails in a round is reported and tried again next round.
pub async fn run(options: &ArchiveOptions) -> anyhow::Result<()> {
    let store = Store::create(&options.store)?;
    let client = connect(&options.uri, "shoal backup archive").await?;
    let cluster = cluster_id(&client).await?;
    let mut members: HashMap<String, Client> = HashMap::new();
    let mut round = 0u64;
    loop {
        round += 1;
        match set_targets(&client, options.config.as_deref()).await {
            Ok(targets) => {
                for target in &targets {
                    let archive = SetArchive::new(&store, &cluster, &target.name);
                    if let Err(error) = archive_set(&store, &archive, target, &mut members).await {
                        eprintln!("archive of set {}: {error:#}", target.name);
                        members.clear();
                    }
                }
            }
            Err(error) => eprintln!("archive round {round}: {error:#}"),
        }
        if options.rounds.is_some_and(|rounds| round >= rounds) {
            return Ok(());
        }
        tokio::time::sleep(options.interval).await;
    }
}

/// The primary of `target` (following the hosts its members list).
async fn find_primary(target: &SetTarget) -> anyhow::Result<String> {
    let mut hosts = target.seeds.clone();
    let mut probed = 0;
    while probed < hosts.len() && probed < MEMBERS_PROBED_MAX {
        let host = hosts[probed].clone();
        probed += 1;
        let Ok(reply) = hello(&host).await else {
            continue;
        };
        if reply.get_bool("isWritablePrimary") == Ok(true) {
            return Ok(host);
        }
        for listed in reply.get_array("hosts").into_iter().flatten() {
            if let Some(listed) = listed.as_str()
                && !hosts.iter().any(|known| known == listed)
            {
                hosts.push(listed.to_owned());
            }
        }
    }
    anyhow::bail!(
        "set {} has no primary (tried {})",
        target.name,
        hosts.join(", ")
    )
}

/// One round for one set: pages of entries after the progress until caught up with the
/// primary's applied index (or [`PAGES_PER_ROUND_MAX`] pages).
pub(super) async fn archive_set(
    store: &Store,
    archive: &SetArchive,
    target: &SetTarget,
    members: &mut HashMap<String, Client>,
) -> anyhow::Result<()> {
    let primary = find_primary(target).await?;
    if !members.contains_key(&primary) {
        members.insert(primary.clone(), direct_client(&primary).await?);
    }
    let client = members
        .get(&primary)
        .context("the primary's client vanished")?;
    let mut progress = archive.progress()?;
    for _ in 0..PAGES_PER_ROUND_MAX {
        let asked_at = Utc::now().timestamp_millis();
        let command = doc! {"_shoalOplogRead": 1, "after": i64::try_from(progress.last)?};
        let reply =
            tokio::time::timeout(READ_TIMEOUT, client.database("admin").run_command(command))
                .await
                .map_err(|_| anyhow::anyhow!("{primary} did not answer _shoalOplogRead in time"))?
                .with_context(|| format!("_shoalOplogRead on {primary}"))?;
        let page = parse_page(&reply).with_context(|| format!("{primary} answered {reply}"))?;
        if let Some(large) = page.large {
            let entry = read_large_entry(client, &primary, large).await?;
            let segment = archive.write_segment(store, std::slice::from_ref(&entry))?;
            progress.last = segment.last;
            if segment.last >= page.applied {
                progress.as_of_millis = asked_at;
            }
            archive.write_progress(&progress)?;
            continue;
        }
        if page.entries.is_empty() {
            if page.applied > progress.last {
                // Purged before it was archived: record the gap and resume where the log does.
                let resumed = page.first_held.unwrap_or(page.applied.saturating_add(1));
                anyhow::ensure!(
                    resumed > progress.last.saturating_add(1),
                    "{primary} returned no entries after {} though it applied {}",
                    progress.last,
                    page.applied
                );
                eprintln!(
                    "archive of set {}: entries {}..{} were purged before they were archived",
                    archive.set,
                    progress.last + 1,
                    resumed
                );
                progress.gaps.push(Gap {
                    after: progress.last,
                    resumed,
                });
                progress.last = resumed.saturating_sub(1);
                archive.write_progress(&progress)?;
                continue;
            }
            progress.as_of_millis = asked_at;
            archive.write_progress(&progress)?;
            return Ok(());
        }
        let segment = archive.write_segment(store, &page.entries)?;
        progress.last = segment.last;
        if segment.last >= page.applied {
            progress.as_of_millis = asked_at;
        }
        archive.write_progress(&progress)?;
        if segment.last >= page.applied {
            return Ok(());
        }
    }
    Ok(())
}

/// Parts an entry may be stored or read in.
fn max_parts() -> i64 {
    i64::try_from(OPLOG_ENTRY_BYTES_MAX.div_ceil(OPLOG_PART_BYTES)).unwrap_or(i64::MAX)
}

/// Reads the entry `large` names from `primary` part by part (`_shoalOplogRead {entry,
/// offset}`) and checks it decodes as that entry.
async fn read_large_entry(
    client: &Client,
    primary: &str,
    large: LargeEntry,
) -> anyhow::Result<ArchivedEntry> {
    let total = usize::try_from(large.bytes)?;
    anyhow::ensure!(
        total <= OPLOG_ENTRY_BYTES_MAX,
        "{primary}: log entry {} is {total} bytes, more than the {OPLOG_ENTRY_BYTES_MAX} the archive takes",
        large.index
    );
    let mut bytes = Vec::with_capacity(total);
    for _ in 0..max_parts() {
        if bytes.len() >= total {
            break;
        }
        let command = doc! {
            "_shoalOplogRead": 1,
            "entry": i64::try_from(large.index)?,
            "offset": i64::try_from(bytes.len())?,
        };
        let reply =
            tokio::time::timeout(READ_TIMEOUT, client.database("admin").run_command(command))
                .await
                .map_err(|_| anyhow::anyhow!("{primary} did not answer _shoalOplogRead in time"))?
                .with_context(|| format!("reading log entry {} from {primary}", large.index))?;
        anyhow::ensure!(
            reply.get_i64("total").ok() == i64::try_from(total).ok(),
            "{primary}: log entry {} changed size while it was read: {reply}",
            large.index
        );
        let part = reply.get_binary_generic("part")?;
        anyhow::ensure!(
            !part.is_empty(),
            "{primary}: empty part of log entry {}",
            large.index
        );
        bytes.extend_from_slice(part);
    }
    anyhow::ensure!(
        bytes.len() == total,
        "{primary}: log entry {} read as {} of its {total} bytes",
        large.index,
        bytes.len()
    );
    ArchivedEntry::from_stored(large.index, bytes)
        .with_context(|| format!("{primary}: log entry {} does not decode", large.index))
}

/// A `_shoalOplogRead` reply.
struct Page {
    entries: Vec<ArchivedEntry>,
    applied: u64,
    first_held: Option<u64>,
    /// The next entry, too large for a page.
    large: Option<LargeEntry>,
}

fn parse_page(reply: &Document) -> anyhow::Result<Page> {
    let applied = u64::try_from(reply.get_i64("applied")?)?;
    let first_held = match reply.get("firstHeld") {
        Some(Bson::Int64(index)) => Some(u64::try_from(*index)?),
        _ => None,
    };
    let large = match reply.get("large") {
        Some(Bson::Document(large)) => Some(LargeEntry {
            index: u64::try_from(large.get_i64("i")?)?,
            bytes: u64::try_from(large.get_i64("bytes")?)?,
        }),
        _ => None,
    };
    let mut entries = Vec::new();
    for value in reply.get_array("entries")? {
        let entry = value.as_document().context("an entry is not a document")?;
        let index = u64::try_from(entry.get_i64("i")?)?;
        let bytes = entry.get_binary_generic("e")?.clone();
        entries.push(ArchivedEntry::from_stored(index, bytes)?);
    }
    anyhow::ensure!(
        entries.windows(2).all(|w| w[1].index == w[0].index + 1),
        "the entries are not consecutive"
    );
    Ok(Page {
        entries,
        applied,
        first_held,
        large,
    })
}

/// The archived sets of `cluster` and their progress, by set name.
pub fn sets_of(store: &Store, cluster: &str) -> anyhow::Result<Vec<(String, Progress)>> {
    let dir = store.root().join(ARCHIVE_DIR).join(cluster);
    let listing = match std::fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut sets = Vec::new();
    for entry in listing {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let progress = SetArchive::new(store, cluster, &name).progress()?;
        sets.push((name, progress));
    }
    sets.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> ArchivedEntry {
        let entry = serde_json::json!({
            "log_id": {"leader_id": 1, "index": index},
            "payload": "Blank",
        });
        ArchivedEntry::from_stored(index, serde_json::to_vec(&entry).unwrap()).unwrap()
    }

    #[test]
    fn segments_round_trip_and_damage_is_found() {
        let work = tempfile::tempdir().unwrap();
        let store = Store::create(work.path()).unwrap();
        let archive = SetArchive::new(&store, "c1", "rs");
        assert_eq!(archive.progress().unwrap(), Progress::default());
        let entries: Vec<ArchivedEntry> = (5..9).map(entry).collect();
        let segment = archive.write_segment(&store, &entries).unwrap();
        assert_eq!((segment.first, segment.last), (5, 8));
        assert_eq!(archive.segments().unwrap(), vec![segment.clone()]);
        assert_eq!(archive.read_segment(&store, &segment).unwrap(), entries);
        let progress = Progress {
            last: 8,
            as_of_millis: 7,
            gaps: vec![],
        };
        archive.write_progress(&progress).unwrap();
        assert_eq!(archive.progress().unwrap(), progress);
        assert_eq!(
            sets_of(&store, "c1").unwrap(),
            vec![("rs".to_owned(), progress)]
        );
        std::fs::write(store.object_path(&segment.object), b"damaged").unwrap();
        let error = archive.read_segment(&store, &segment).unwrap_err();
        assert!(format!("{error:#}").contains("damaged"), "{error:#}");
    }

    /// An entry larger than a BSON binary may be is stored in parts and read back whole.
    #[test]
    fn a_large_entry_is_stored_in_parts() {
        let work = tempfile::tempdir().unwrap();
        let store = Store::create(work.path()).unwrap();
        let archive = SetArchive::new(&store, "c1", "rs");
        let large = serde_json::json!({
            "log_id": {"leader_id": 1, "index": 9},
            "payload": "Blank",
            "pad": "x".repeat(2 * OPLOG_PART_BYTES + 5),
        });
        let large = ArchivedEntry::from_stored(9, serde_json::to_vec(&large).unwrap()).unwrap();
        assert!(large.bytes.len() > 2 * OPLOG_PART_BYTES);
        let entries = vec![entry(8), large, entry(10)];
        let segment = archive.write_segment(&store, &entries).unwrap();
        assert_eq!(archive.read_segment(&store, &segment).unwrap(), entries);
    }
}
