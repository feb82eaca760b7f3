//! The shard-side commands of chunk migration and ownership, driven by the config server.
//!
//! - `_shoalSetFiltering` (replicated): installs or clears the collection's [`ShardingState`].
//! - `_shoalMigrateStart` / `_shoalMigrateMods` / `_shoalMigrateEnd` (donor primary, local):
//!   register a tracker of the migrating range, drain the documents changed since, drop it.
//! - `_shoalMigrateRead` (donor primary): one page of the range's documents, in storage order.
//! - `_shoalMigrateApply` (replicated, recipient): upserts copied documents and deletes the
//!   `_id`s the donor deleted, without ownership checks (the recipient does not own the range
//!   until the commit, so readers do not see these documents yet).
//! - `_shoalDeleteRange` (replicated): deletes one page of documents of a range this shard does
//!   NOT own (a donor's copy after the commit, a recipient's copy after an abort). Owned
//!   documents are never touched, whatever the caller asks.
//! - `_shoalCursorsOpen`: the cursors open on a namespace, so range deletion can wait for reads
//!   that began before the commit.
//!
//! Every page is bounded in bytes and in documents examined, and resumes from a storage key the
//! caller passes back (`after`), so each call costs the same however large the range.

use std::sync::Arc;

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use shoal_common::{CommandError, ErrorCode, Namespace, chunks::ShardKeyPattern};

use crate::{
    args::Fields,
    catalog,
    engine::Engine,
    index,
    keys::{collection_range, decode_document, doc_key},
    kv::Space,
    sharding::{KeyRange, ShardingState},
    tracking::Tracker,
    txn::{Direct, Reader, Step, Txn, scan_documents},
    write::prepare,
};

/// Documents one page examines at most (a page over a range that holds few of a large
/// collection's documents stops here and resumes later).
pub const MIGRATE_EXAMINE_MAX: usize = 50_000;
/// Bytes of documents one page returns or applies at most. A page applied on the recipient is
/// one Raft entry; up to 16 entries travel in one append message, which must fit a 64 MiB RPC
/// frame once base64-encoded, so pages stay at 2 MiB.
pub const MIGRATE_PAGE_BYTES_MAX: usize = 2 << 20;
/// Documents one `_shoalDeleteRange` call deletes at most.
pub const DELETE_RANGE_DOCS_MAX: usize = 10_000;

fn ns_of(command: &Document, name: &str) -> Result<String, CommandError> {
    match command.get(name) {
        Some(Bson::String(ns)) => Ok(Namespace::parse(ns)?.to_string()),
        _ => Err(CommandError::bad_value(format!(
            "{name} takes a namespace string"
        ))),
    }
}

/// The shard key and range a command names: `key`, `min`, `max`.
fn key_and_range(fields: &Fields<'_>) -> Result<(ShardKeyPattern, KeyRange), CommandError> {
    let key = fields.doc("key")?.ok_or_else(|| fields.missing("key"))?;
    let pattern = ShardKeyPattern::parse(key)?;
    let min = fields.doc("min")?.ok_or_else(|| fields.missing("min"))?;
    let max = fields.doc("max")?.ok_or_else(|| fields.missing("max"))?;
    let range = KeyRange::from_document(&doc! {"min": min.clone(), "max": max.clone()})?;
    pattern.validate_key_shape(&range.min)?;
    pattern.validate_key_shape(&range.max)?;
    Ok((pattern, range))
}

fn in_range(pattern: &ShardKeyPattern, range: &KeyRange, document: &Document) -> bool {
    pattern
        .extract(document)
        .is_ok_and(|key| range.contains(&key))
}

fn resume_key(fields: &Fields<'_>, start: Vec<u8>) -> Result<Vec<u8>, CommandError> {
    match fields.doc.get("after") {
        None | Some(Bson::Null) => Ok(start),
        Some(Bson::Binary(after)) if after.bytes.as_slice() >= start.as_slice() => {
            Ok(after.bytes.clone())
        }
        Some(_) => Err(CommandError::bad_value(
            "'after' must be a key this scan returned",
        )),
    }
}

fn binary(bytes: Vec<u8>) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    })
}

impl Engine {
    /// `_shoalSetFiltering: ns, sharding: state | null`.
    pub(crate) fn set_filtering(&self, command: &Document) -> Result<Document, CommandError> {
        let ns = ns_of(command, "_shoalSetFiltering")?;
        let state = match command.get("sharding") {
            Some(Bson::Document(state)) => Some(Arc::new(ShardingState::from_document(state)?)),
            None | Some(Bson::Null) => None,
            Some(other) => {
                return Err(CommandError::type_mismatch("sharding", "object", other));
            }
        };
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        let mut entry = match (catalog::lookup(&txn, &ns)?, &state) {
            (Some(entry), _) => entry,
            (None, Some(_)) => catalog::create(&mut txn, &ns)?,
            (None, None) => return Ok(Document::new()),
        };
        // A push older than what the shard holds (a deposed config primary's) changes nothing:
        // versions of one epoch only grow.
        if let (Some(current), Some(new)) = (&entry.sharding, &state)
            && current.epoch == new.epoch
            && new.collection_major < current.collection_major
        {
            return Err(CommandError::new(
                ErrorCode::STALE_CONFIG,
                format!(
                    "refusing ownership of {ns} at collection version {} older than the held {}",
                    new.collection_major, current.collection_major
                ),
            ));
        }
        entry.sharding = state;
        txn.put(
            Space::Catalog,
            crate::keys::catalog_key(&ns),
            entry.encode(),
        );
        txn.commit()?;
        Ok(Document::new())
    }

    /// `_shoalMigrateRead: ns, key, min, max, after?`: the next page of the range's documents
    /// and where to resume (`next: null` once the range is exhausted).
    pub(crate) fn migrate_read(&self, command: &Document) -> Result<Document, CommandError> {
        let ns = ns_of(command, "_shoalMigrateRead")?;
        let fields = Fields::new(command, "_shoalMigrateRead");
        let (pattern, range) = key_and_range(&fields)?;
        let reader = Direct(self.kv.as_ref());
        let Some(entry) = catalog::lookup(&reader, &ns)? else {
            return Ok(doc! {"docs": [], "bytes": 0_i64, "next": Bson::Null});
        };
        let (start, end) = collection_range(entry.id);
        let from = resume_key(&fields, start)?;
        let mut docs = Vec::new();
        let (mut bytes, mut examined) = (0usize, 0usize);
        let next = scan_documents(&reader, &from, &end, |_, document, size| {
            examined += 1;
            if in_range(&pattern, &range, &document) {
                if !docs.is_empty() && bytes + size > MIGRATE_PAGE_BYTES_MAX {
                    return Ok::<_, CommandError>(Step::StopBefore);
                }
                bytes += size;
                docs.push(document);
            }
            Ok(if examined >= MIGRATE_EXAMINE_MAX {
                Step::StopAfter
            } else {
                Step::Next
            })
        })?;
        Ok(doc! {
            "docs": docs,
            "bytes": i64::try_from(bytes).unwrap_or(i64::MAX),
            "next": next.map_or(Bson::Null, binary),
        })
    }

    /// `_shoalMigrateApply: ns, key, min, max, docs, deletes`: the recipient's side of a page.
    pub(crate) fn migrate_apply(&self, command: &Document) -> Result<Document, CommandError> {
        let ns = ns_of(command, "_shoalMigrateApply")?;
        let fields = Fields::new(command, "_shoalMigrateApply");
        let (pattern, range) = key_and_range(&fields)?;
        let docs = fields.array("docs")?.unwrap_or_default();
        let deletes = fields.array("deletes")?.unwrap_or_default();
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        txn.ownership_checks = false;
        let mut entry = catalog::ensure(&mut txn, &ns)?;
        let (mut upserted, mut deleted) = (0i64, 0i64);
        for document in docs {
            let Bson::Document(document) = document else {
                return Err(CommandError::type_mismatch("docs", "object", document));
            };
            if !in_range(&pattern, &range, document) {
                return Err(CommandError::bad_value(format!(
                    "migrated document {} is outside the range",
                    document.get("_id").cloned().unwrap_or(Bson::Null)
                )));
            }
            let prepared = prepare(document)?;
            let key = doc_key(entry.id, &prepared.id);
            let old = stored(&txn, &key)?;
            index::stage_document(
                &mut txn,
                &mut entry,
                key,
                old.as_ref(),
                &prepared.document,
                prepared.bytes,
            )
            .map_err(CommandError::from)?;
            upserted += 1;
        }
        for id in deletes {
            let key = doc_key(entry.id, id);
            let Some(old) = stored(&txn, &key)? else {
                continue;
            };
            if in_range(&pattern, &range, &old) {
                index::unstage_document(&mut txn, &mut entry, key, &old)
                    .map_err(CommandError::from)?;
                deleted += 1;
            }
        }
        txn.commit()?;
        Ok(doc! {"upserted": upserted, "deleted": deleted})
    }

    /// `_shoalDeleteRange: ns, key, min, max, epoch, after?`: deletes the next page of the
    /// range's documents that this shard does not own, if it still holds that epoch.
    pub(crate) fn delete_range(&self, command: &Document) -> Result<Document, CommandError> {
        let ns = ns_of(command, "_shoalDeleteRange")?;
        let fields = Fields::new(command, "_shoalDeleteRange");
        let (pattern, range) = key_and_range(&fields)?;
        let _writer = self.lock_writer();
        let mut txn = Txn::new(self.kv.as_ref());
        txn.ownership_checks = false;
        let Some(mut entry) = catalog::lookup(&txn, &ns)? else {
            return Ok(doc! {"deleted": 0_i64, "next": Bson::Null});
        };
        // Only documents of the incarnation the task was made for: after a drop and re-creation
        // (or for an unsharded collection) nothing here is a leftover copy.
        let epoch = fields
            .doc
            .get_object_id("epoch")
            .map_err(|_| fields.missing("epoch"))?;
        let Some(owner) = entry.sharding.clone().filter(|state| state.epoch == epoch) else {
            return Ok(doc! {"deleted": 0_i64, "next": Bson::Null});
        };
        let owner = Some(owner);
        let (start, end) = collection_range(entry.id);
        let from = resume_key(&fields, start)?;
        let mut doomed = Vec::new();
        let mut examined = 0usize;
        let next = scan_documents(
            &Direct(self.kv.as_ref()),
            &from,
            &end,
            |key, document, _| {
                examined += 1;
                let owned = owner.as_ref().is_some_and(|owner| owner.owns(&document));
                if !owned && in_range(&pattern, &range, &document) {
                    doomed.push((key.to_vec(), document));
                }
                Ok::<_, CommandError>(
                    if examined >= MIGRATE_EXAMINE_MAX || doomed.len() >= DELETE_RANGE_DOCS_MAX {
                        Step::StopAfter
                    } else {
                        Step::Next
                    },
                )
            },
        )?;
        let deleted = i64::try_from(doomed.len()).unwrap_or(i64::MAX);
        for (key, old) in doomed {
            index::unstage_document(&mut txn, &mut entry, key, &old).map_err(CommandError::from)?;
        }
        txn.commit()?;
        Ok(doc! {"deleted": deleted, "next": next.map_or(Bson::Null, binary)})
    }

    /// `_shoalMigrateStart: ns, key, min, max`: starts recording changes to the range
    /// (replacing a tracker an earlier, abandoned migration of `ns` left).
    pub(crate) fn migrate_start(&self, command: &Document) -> Result<Document, CommandError> {
        let ns = ns_of(command, "_shoalMigrateStart")?;
        let fields = Fields::new(command, "_shoalMigrateStart");
        let (pattern, range) = key_and_range(&fields)?;
        let Some(entry) = catalog::lookup(&Direct(self.kv.as_ref()), &ns)? else {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_NOT_FOUND,
                format!("no collection {ns} on the donor"),
            ));
        };
        let prefix = crate::keys::collection_prefix(entry.id);
        self.trackers
            .with(|table| table.insert(ns, Tracker::new(prefix, pattern, range)));
        Ok(Document::new())
    }

    /// `_shoalMigrateMods: ns`: the documents changed in the range since the last call (current
    /// versions, and the `_id`s of deleted ones), and how many changes remain.
    pub(crate) fn migrate_mods(&self, command: &Document) -> Result<Document, CommandError> {
        let ns = ns_of(command, "_shoalMigrateMods")?;
        let drained = self.trackers.with(|table| match table.get_mut(&ns) {
            None => Err(no_migration(&ns)),
            Some(tracker) => match &tracker.broken {
                Some(why) => Err(CommandError::new(
                    ErrorCode::OPERATION_FAILED,
                    format!("migration of {ns} lost track of changes: {why}"),
                )),
                None => Ok(tracker.drain(MIGRATE_EXAMINE_MAX)),
            },
        })?;
        let (changed, mut remaining) = drained;
        let mut docs = Vec::new();
        let mut deletes = Vec::new();
        let mut bytes = 0usize;
        let mut unsent = Vec::new();
        for (key, id) in changed {
            if bytes >= MIGRATE_PAGE_BYTES_MAX {
                unsent.push((key, id));
                continue;
            }
            match self.kv.get(Space::Docs, &key)? {
                Some(value) => {
                    bytes += value.len();
                    docs.push(decode_document(&key, &value)?);
                }
                None => deletes.push(id),
            }
        }
        if !unsent.is_empty() {
            remaining += unsent.len();
            self.trackers.with(|table| {
                if let Some(tracker) = table.get_mut(&ns) {
                    tracker.restore(unsent);
                }
            });
        }
        tracing::debug!(
            ns = %ns,
            docs = docs.len(),
            deletes = deletes.len(),
            remaining,
            "migration catch-up drained"
        );
        Ok(doc! {
            "docs": docs,
            "deletes": deletes,
            "remaining": i64::try_from(remaining).unwrap_or(i64::MAX),
        })
    }

    /// `_shoalMigrateEnd: ns`: drops the tracker.
    pub(crate) fn migrate_end(&self, command: &Document) -> Result<Document, CommandError> {
        let ns = ns_of(command, "_shoalMigrateEnd")?;
        let existed = self.trackers.with(|table| table.remove(&ns).is_some());
        Ok(doc! {"existed": existed})
    }

    /// `_shoalCursorsOpen: ns`: how many cursors are open on `ns`, and the age of the oldest.
    pub(crate) fn cursors_open(&self, command: &Document) -> Result<Document, CommandError> {
        let ns = ns_of(command, "_shoalCursorsOpen")?;
        let (open, oldest) = self.lock_cursors().open_on(&ns);
        Ok(doc! {
            "open": i64::try_from(open).unwrap_or(i64::MAX),
            "oldestAgeMillis": i64::try_from(oldest.as_millis()).unwrap_or(i64::MAX),
        })
    }
}

fn no_migration(ns: &str) -> CommandError {
    CommandError::new(
        ErrorCode::CONFLICTING_OPERATION_IN_PROGRESS,
        format!("no migration of {ns} is in progress on this member (it may have failed over)"),
    )
}

fn stored(txn: &Txn<'_>, key: &[u8]) -> Result<Option<Document>, CommandError> {
    Ok(txn
        .get(Space::Docs, key)?
        .map(|bytes| decode_document(key, &bytes))
        .transpose()?)
}

#[cfg(test)]
mod tests {
    use bson::oid::ObjectId;

    use super::*;
    use crate::error::StoreError;
    use crate::kv::{Kv, MemKv, Space};

    fn ok(reply: &Document) -> &Document {
        assert_eq!(reply.get_f64("ok").ok(), Some(1.0), "{reply}");
        reply
    }

    fn sharding(ranges: &[(i32, i32)], critical: Option<(i32, i32)>, major: i64) -> Document {
        let range = |(min, max): (i32, i32)| doc! {"min": {"k": min}, "max": {"k": max}};
        let mut state = doc! {
            "epoch": ObjectId::from_bytes([7; 12]), "major": major, "key": {"k": 1},
            "ranges": ranges.iter().copied().map(range).collect::<Vec<_>>(),
        };
        if let Some(critical) = critical {
            state.insert("critical", range(critical));
        }
        state
    }

    fn version(major: u32) -> Document {
        doc! {"e": ObjectId::from_bytes([7; 12]), "v": bson::Timestamp { time: major, increment: 0 }}
    }

    #[test]
    fn ownership_filters_reads_and_refuses_writes() {
        let engine = Engine::with_kv(Arc::new(MemKv::new())).unwrap();
        let docs: Vec<Document> = (0..20).map(|k| doc! {"_id": k, "k": k}).collect();
        ok(&engine.execute("db", &doc! {"insert": "c", "documents": docs}));
        let set =
            doc! {"_shoalSetFiltering": "db.c", "sharding": sharding(&[(0, 10)], Some((5, 10)), 2)};
        ok(&engine.execute("db", &set));
        let count = engine.execute("db", &doc! {"count": "c"});
        assert_eq!(
            count
                .get_i64("n")
                .or(count.get_i32("n").map(i64::from))
                .unwrap(),
            10
        );
        let stale = engine.execute("db", &doc! {"find": "c", "shardVersion": version(1)});
        assert_eq!(stale.get_i32("code").unwrap(), 13388, "{stale}");
        let fine = engine.execute("db", &doc! {"find": "c", "shardVersion": version(2)});
        ok(&fine);
        let insert = engine.execute(
            "db",
            &doc! {"insert": "c", "documents": [{"_id": 100, "k": 1}, {"_id": 101, "k": 6}], "ordered": false},
        );
        assert_eq!(insert.get_i32("n").unwrap(), 1, "{insert}");
        let errors = insert.get_array("writeErrors").unwrap();
        assert_eq!(errors.len(), 1);
        let update = engine.execute(
            "db",
            &doc! {"update": "c", "updates": [{"q": {}, "u": {"$inc": {"x": 1}}, "multi": true}]},
        );
        // The multi-update reached a document under the critical section: nothing changed.
        assert!(update.get_array("writeErrors").is_ok(), "{update}");
        let changed = engine.execute("db", &doc! {"count": "c", "query": {"x": 1}});
        assert_eq!(
            changed
                .get_i32("n")
                .or(changed.get_i64("n").map(|n| n as i32))
                .unwrap(),
            0
        );
    }

    #[test]
    fn a_range_is_copied_tracked_and_deleted() {
        let donor = Engine::with_kv(Arc::new(MemKv::new())).unwrap();
        let recipient = Engine::with_kv(Arc::new(MemKv::new())).unwrap();
        let docs: Vec<Document> = (0..30).map(|k| doc! {"_id": k, "k": k}).collect();
        ok(&donor.execute("db", &doc! {"insert": "c", "documents": docs}));
        ok(&donor.execute(
            "db",
            &doc! {"_shoalSetFiltering": "db.c", "sharding": sharding(&[(0, 30)], None, 1)},
        ));
        ok(&recipient.execute(
            "db",
            &doc! {"_shoalSetFiltering": "db.c", "sharding": sharding(&[], None, 0)},
        ));
        let range = doc! {"key": {"k": 1}, "min": {"k": 10}, "max": {"k": 20}};
        let mut start = doc! {"_shoalMigrateStart": "db.c"};
        start.extend(range.clone());
        ok(&donor.execute("admin", &start));
        let mut read = doc! {"_shoalMigrateRead": "db.c"};
        read.extend(range.clone());
        let page = donor.execute("admin", &read);
        let copied = page.get_array("docs").unwrap().clone();
        assert_eq!(copied.len(), 10);
        ok(&donor.execute(
            "db",
            &doc! {"delete": "c", "deletes": [{"q": {"k": 12}, "limit": 1}]},
        ));
        ok(&donor.execute(
            "db",
            &doc! {"update": "c", "updates": [{"q": {"k": 13}, "u": {"$set": {"x": 1}}}]},
        ));
        ok(&donor.execute(
            "db",
            &doc! {"update": "c", "updates": [{"q": {"k": 25}, "u": {"$set": {"x": 1}}}]},
        ));
        let mut apply = doc! {"_shoalMigrateApply": "db.c", "docs": copied, "deletes": []};
        apply.extend(range.clone());
        ok(&recipient.execute("admin", &apply));
        let mods = donor.execute("admin", &doc! {"_shoalMigrateMods": "db.c"});
        assert_eq!(mods.get_array("docs").unwrap().len(), 1, "{mods}");
        assert_eq!(mods.get_array("deletes").unwrap().len(), 1, "{mods}");
        let mut apply = doc! {"_shoalMigrateApply": "db.c", "docs": mods.get_array("docs").unwrap().clone(), "deletes": mods.get_array("deletes").unwrap().clone()};
        apply.extend(range.clone());
        ok(&recipient.execute("admin", &apply));
        // Not owned yet: invisible on the recipient.
        let count = recipient.execute("db", &doc! {"count": "c"});
        assert_eq!(count.get_i32("n").unwrap(), 0);
        ok(&recipient.execute(
            "db",
            &doc! {"_shoalSetFiltering": "db.c", "sharding": sharding(&[(10, 20)], None, 2)},
        ));
        let count = recipient.execute("db", &doc! {"count": "c", "query": {"x": 1}});
        assert_eq!(count.get_i32("n").unwrap(), 1);
        let count = recipient.execute("db", &doc! {"count": "c"});
        assert_eq!(count.get_i32("n").unwrap(), 9);
        ok(&donor.execute("db", &doc! {"_shoalSetFiltering": "db.c", "sharding": sharding(&[(0, 10), (20, 30)], None, 2)}));
        let mut delete = doc! {"_shoalDeleteRange": "db.c"};
        delete.extend(doc! {"key": {"k": 1}, "min": {"k": 0}, "max": {"k": 30}});
        // A task of another incarnation of the collection deletes nothing.
        let mut other = delete.clone();
        other.insert("epoch", ObjectId::from_bytes([8; 12]));
        let nothing = donor.execute("admin", &other);
        assert_eq!(nothing.get_i64("deleted").unwrap(), 0, "{nothing}");
        delete.insert("epoch", ObjectId::from_bytes([7; 12]));
        let deleted = donor.execute("admin", &delete);
        assert_eq!(deleted.get_i64("deleted").unwrap(), 9, "{deleted}");
        let left = donor.execute("db", &doc! {"dataSize": "db.c"});
        ok(&left);
        let all = donor.execute("db", &doc! {"count": "c"});
        assert_eq!(all.get_i32("n").unwrap(), 20);
        // An older push (a deposed config primary's) is refused and changes nothing.
        let older = donor.execute(
            "db",
            &doc! {"_shoalSetFiltering": "db.c", "sharding": sharding(&[(0, 30)], None, 1)},
        );
        assert_eq!(older.get_i32("code").unwrap(), 13388, "{older}");
        let all = donor.execute("db", &doc! {"count": "c"});
        assert_eq!(all.get_i32("n").unwrap(), 20);
    }

    /// Storage that, once armed, stalls inside its next write until released: the moment at
    /// which a catch-up drain used to see a change noted but not yet written.
    #[derive(Default)]
    struct StallingKv {
        inner: MemKv,
        armed: std::sync::atomic::AtomicBool,
        gate: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
        entered: std::sync::Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    }

    impl Kv for StallingKv {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(space, key)
        }
        fn scan(
            &self,
            space: Space,
            start: &[u8],
            end: &[u8],
            limit: usize,
        ) -> Result<Vec<crate::kv::KvPair>, StoreError> {
            self.inner.scan(space, start, end, limit)
        }
        fn scan_reverse(
            &self,
            space: Space,
            start: &[u8],
            end: &[u8],
            limit: usize,
        ) -> Result<Vec<crate::kv::KvPair>, StoreError> {
            self.inner.scan_reverse(space, start, end, limit)
        }
        fn write(&self, batch: crate::kv::WriteBatch, sync: bool) -> Result<(), StoreError> {
            if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                if let Some(entered) = self.entered.lock().unwrap().take() {
                    entered.send(()).unwrap();
                }
                let gate = self.gate.lock().unwrap().take();
                if let Some(gate) = gate {
                    // Bounded: a test that never releases fails rather than hangs.
                    gate.recv_timeout(std::time::Duration::from_secs(10))
                        .unwrap();
                }
            }
            self.inner.write(batch, sync)
        }
    }

    #[test]
    fn a_catch_up_drain_during_a_write_still_sees_the_write() {
        use std::{sync::mpsc, time::Duration};
        let kv = Arc::new(StallingKv::default());
        let donor = Arc::new(Engine::with_kv(Arc::clone(&kv) as Arc<dyn Kv>).unwrap());
        ok(&donor.execute(
            "db",
            &doc! {"insert": "c", "documents": [{"_id": 0, "k": 0}]},
        ));
        ok(&donor.execute(
            "db",
            &doc! {"_shoalSetFiltering": "db.c", "sharding": sharding(&[(0, 30)], None, 1)},
        ));
        let mut start = doc! {"_shoalMigrateStart": "db.c"};
        start.extend(doc! {"key": {"k": 1}, "min": {"k": 0}, "max": {"k": 30}});
        ok(&donor.execute("admin", &start));
        // The clone has read the range (one document) before the write below lands.
        // Each channel carries one message.
        let (release, gate) = mpsc::sync_channel(1);
        let (entered_tx, entered) = mpsc::sync_channel(1);
        *kv.gate.lock().unwrap() = Some(gate);
        *kv.entered.lock().unwrap() = Some(entered_tx);
        kv.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let writer = {
            let donor = Arc::clone(&donor);
            std::thread::spawn(move || {
                donor.execute(
                    "db",
                    &doc! {"insert": "c", "documents": [{"_id": 5, "k": 5}]},
                )
            })
        };
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        let (mods_tx, mods_rx) = mpsc::sync_channel(1);
        let drainer = {
            let donor = Arc::clone(&donor);
            std::thread::spawn(move || {
                let mods = donor.execute("admin", &doc! {"_shoalMigrateMods": "db.c"});
                mods_tx.send(mods).unwrap();
            })
        };
        // Give the drain every chance to run while the write is stalled; it must not report
        // the document deleted (the old behaviour) whatever the interleaving.
        let early = mods_rx.recv_timeout(Duration::from_millis(300)).ok();
        release.send(()).unwrap();
        ok(&writer.join().unwrap());
        drainer.join().unwrap();
        let first = early.unwrap_or_else(|| mods_rx.recv().unwrap());
        let second = donor.execute("admin", &doc! {"_shoalMigrateMods": "db.c"});
        let mut present = false;
        for mods in [ok(&first), ok(&second)] {
            for deleted in mods.get_array("deletes").unwrap() {
                assert_ne!(
                    deleted,
                    &Bson::Int32(5),
                    "the write was sent as a delete: {mods}"
                );
            }
            present |= mods
                .get_array("docs")
                .unwrap()
                .iter()
                .any(|d| d.as_document().and_then(|d| d.get("_id")) == Some(&Bson::Int32(5)));
        }
        assert!(
            present,
            "the write reached neither catch-up round: {first} {second}"
        );
    }
}
