//! The oplog as backups see it: reading applied log entries for the oplog archive
//! (`_shoalOplogRead`), and replaying archived entries onto a restored checkpoint to rebuild a
//! set as it was at a point in time.
//!
//! Point-in-time recovery is a checkpoint plus a prefix of the log after it. Entries are
//! archived exactly as the log stores them, so a restore puts them back under their indexes and
//! lets the state machine apply them with the same code as a live member; nothing is
//! re-interpreted. Only applied entries are read: an applied entry is committed, so it is the
//! same on every member, can never be truncated by a new primary, and any member may serve the
//! archive.
//!
//! The cut at time T keeps every entry before the first write proposed at or after T. A write
//! acknowledged before T was proposed before T, and one sent at T or later is proposed at T or
//! later, so the prefix holds exactly the writes acknowledged before T, plus possibly writes
//! still unacknowledged at T (as with any backup). Blank and membership entries carry no time and
//! follow the writes around them. The proposal time is the primary's clock, so across machines
//! the cut is as precise as their clocks agree.

use std::{io, sync::Arc};

use openraft::{
    EntryPayload,
    alias::{EntryOf, LogIdOf, VoteOf},
};
use shoal_docstore::{Kv, Space, WriteBatch};

use crate::{
    config::ReplConfig,
    force::rebuilt_state,
    log_store::{LogStore, VOTE_KEY, index_key, read_incarnation},
    network::Incarnation,
    state_machine::{APPLIED_KEY, StateMachine, replicated_engine},
    types::{MemberNode, TypeConfig, node_id_for},
};

/// Entries one `_shoalOplogRead` returns at most.
pub const OPLOG_READ_ENTRIES_MAX: usize = 4096;
/// Bytes of entries one `_shoalOplogRead` returns at most (a first entry may pass it): a reply
/// must fit one 16 MB BSON document with its framing.
pub const OPLOG_READ_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Bytes of one entry a page carries whole, and of each part of a larger one: an entry above it
/// (a write command of up to 48 MB, such as a large `insert_many` batch) comes alone, in parts
/// ([`read_entry_part`]), since neither a reply nor a BSON binary may pass 16 MB.
pub const OPLOG_PART_BYTES: usize = 8 * 1024 * 1024;
/// The largest entry the archive takes: the largest write command a member accepts (48 MB)
/// with its framing.
pub const OPLOG_ENTRY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One log entry as the archive keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedEntry {
    /// Its log index.
    pub index: u64,
    /// The proposal time of a write (ms since the epoch); `None` for blank and membership
    /// entries.
    pub time_millis: Option<i64>,
    /// The entry exactly as the log stores it.
    pub bytes: Vec<u8>,
}

impl ArchivedEntry {
    /// Builds an archived entry from stored bytes, checking they decode as the entry at `index`.
    pub fn from_stored(index: u64, bytes: Vec<u8>) -> io::Result<ArchivedEntry> {
        let entry = LogStore::decode(&index_key(index), &bytes)?;
        Ok(ArchivedEntry {
            index,
            time_millis: write_time(&entry),
            bytes,
        })
    }
}

/// What one read of the log returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OplogPage {
    /// Applied entries after the requested index, in order, without holes.
    pub entries: Vec<ArchivedEntry>,
    /// The last applied index of the member (0: none).
    pub applied: u64,
    /// The first index the member's log still holds, `None` when it holds none; an archive
    /// that asked for an older one has lost entries to log purging.
    pub first_held: Option<u64>,
    /// When `entries` is empty because the next entry is larger than [`OPLOG_PART_BYTES`]: that
    /// entry's index and size, to read with [`read_entry_part`].
    pub large: Option<LargeEntry>,
}

/// An applied entry too large for a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargeEntry {
    /// Its log index.
    pub index: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Part of one applied entry's stored bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPart {
    /// The entry's whole size.
    pub total: u64,
    /// The bytes from the requested offset, at most the requested count.
    pub bytes: Vec<u8>,
}

/// Up to `bytes_max` bytes of applied entry `index` from `offset`; `None` when the entry is
/// not applied yet or no longer held (purged).
pub fn read_entry_part(
    kv: &dyn Kv,
    index: u64,
    offset: u64,
    bytes_max: usize,
) -> io::Result<Option<EntryPart>> {
    let applied = applied_log_id(kv)?.map_or(0, |id| id.index);
    if index == 0 || index > applied {
        return Ok(None);
    }
    let Some(value) = kv
        .get(Space::RaftLog, &index_key(index))
        .map_err(io_error)?
    else {
        return Ok(None);
    };
    let start = usize::try_from(offset).map_or(value.len(), |offset| offset.min(value.len()));
    let end = start.saturating_add(bytes_max).min(value.len());
    Ok(Some(EntryPart {
        total: value.len() as u64,
        bytes: value[start..end].to_vec(),
    }))
}

fn io_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

fn write_time(entry: &EntryOf<TypeConfig>) -> Option<i64> {
    match &entry.payload {
        EntryPayload::Normal(proposal) => Some(proposal.now_millis),
        EntryPayload::Blank | EntryPayload::Membership(_) => None,
    }
}

/// The last applied log id stored in `kv`.
pub fn applied_log_id(kv: &dyn Kv) -> io::Result<Option<LogIdOf<TypeConfig>>> {
    match kv.get(Space::RaftMeta, APPLIED_KEY).map_err(io_error)? {
        Some(bytes) => serde_json::from_slice::<Option<LogIdOf<TypeConfig>>>(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        None => Ok(None),
    }
}

/// Reads the applied entries after index `after` from the log in `kv`, at most `entries_max`
/// of them and about `bytes_max` bytes.
pub fn read_applied(
    kv: &dyn Kv,
    after: u64,
    entries_max: usize,
    bytes_max: usize,
) -> io::Result<OplogPage> {
    let applied = applied_log_id(kv)?.map_or(0, |id| id.index);
    let first_held = kv
        .scan(Space::RaftLog, &index_key(0), &[0xff; 9], 1)
        .map_err(io_error)?
        .first()
        .map(|(key, _)| decode_index(key))
        .transpose()?;
    let mut page = OplogPage {
        entries: Vec::new(),
        applied,
        first_held,
        large: None,
    };
    let Some(from) = after.checked_add(1) else {
        return Ok(page);
    };
    if from > applied {
        return Ok(page);
    }
    let end = applied.saturating_add(1);
    let limit = entries_max.min(usize::try_from(end - from).unwrap_or(usize::MAX));
    let stored = kv
        .scan(Space::RaftLog, &index_key(from), &index_key(end), limit)
        .map_err(io_error)?;
    let mut bytes = 0usize;
    let mut expected = from;
    for (key, value) in stored {
        let index = decode_index(&key)?;
        if index != expected {
            // A hole (purged entries): the caller sees where the log resumes from `first_held`.
            break;
        }
        if value.len() > OPLOG_PART_BYTES {
            if page.entries.is_empty() {
                page.large = Some(LargeEntry {
                    index,
                    bytes: value.len() as u64,
                });
            }
            break;
        }
        if !page.entries.is_empty() && bytes.saturating_add(value.len()) > bytes_max {
            break;
        }
        bytes = bytes.saturating_add(value.len());
        page.entries.push(ArchivedEntry::from_stored(index, value)?);
        expected = index.saturating_add(1);
    }
    Ok(page)
}

fn decode_index(key: &[u8]) -> io::Result<u64> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "malformed log key"))
}

/// How many of `entries` (in log order) precede the cut at `to_time_millis`: the entries before
/// the first write proposed at or after it.
pub fn entries_before(entries: &[ArchivedEntry], to_time_millis: i64) -> usize {
    entries
        .iter()
        .position(|entry| entry.time_millis.is_some_and(|t| t >= to_time_millis))
        .unwrap_or(entries.len())
}

/// What [`replay_and_rebuild`] left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// The last entry applied (the checkpoint's, when nothing was replayed).
    pub applied_index: u64,
    /// Entries replayed from the archive.
    pub replayed: usize,
    /// The incarnation the rebuilt set starts.
    pub incarnation: Incarnation,
}

/// Replays `entries` (the archived entries right after the checkpoint in `kv`, already cut at
/// the restore time) onto it, then turns it into a new one-member set whose only member is
/// `host`: the Raft state of [`crate::force`]'s rebuild, as a new incarnation, so that no member
/// of the original set can ever mix with it. Blocking (RocksDB).
pub fn replay_and_rebuild(
    kv: Arc<dyn Kv>,
    set_name: &str,
    host: &str,
    entries: &[ArchivedEntry],
) -> io::Result<Rebuilt> {
    let checkpoint_applied = applied_log_id(kv.as_ref())?.map_or(0, |id| id.index);
    if let Some(first) = entries.first()
        && first.index != checkpoint_applied.saturating_add(1)
    {
        return Err(io_error(format!(
            "archived entries start at {}, the checkpoint needs {} next",
            first.index,
            checkpoint_applied.saturating_add(1)
        )));
    }
    for pair in entries.windows(2) {
        assert_eq!(
            pair[1].index,
            pair[0].index + 1,
            "archived entries have a hole"
        );
    }
    // The checkpoint's own log may hold entries past its applied one that were never
    // committed; only archived (applied, so committed) entries may follow.
    let mut batch = WriteBatch::new();
    batch.delete_range(
        Space::RaftLog,
        index_key(checkpoint_applied.saturating_add(1)).to_vec(),
        vec![0xff; 9],
    );
    for entry in entries {
        batch.put(
            Space::RaftLog,
            index_key(entry.index).to_vec(),
            entry.bytes.clone(),
        );
    }
    kv.write(batch, true).map_err(io_error)?;
    let me = node_id_for(host);
    let engine = replicated_engine(Arc::clone(&kv)).map_err(io_error)?;
    let state_machine = StateMachine::replay_only(Arc::new(engine), Arc::clone(&kv), me);
    let applied = state_machine.apply_log_tail()?.ok_or_else(|| {
        io_error("the checkpoint has applied nothing; there is no set to restore")
    })?;
    assert_eq!(
        applied.index,
        entries.last().map_or(checkpoint_applied, |e| e.index),
        "replay stopped short"
    );
    let vote: Option<VoteOf<TypeConfig>> =
        match kv.get(Space::RaftMeta, VOTE_KEY).map_err(io_error)? {
            Some(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            ),
            None => None,
        };
    let mut members = std::collections::BTreeMap::new();
    members.insert(me, MemberNode::voter(0, host));
    let config = ReplConfig {
        set_name: set_name.to_owned(),
        members,
    };
    let incarnation = Incarnation::after(read_incarnation(kv.as_ref())?);
    let batch = rebuilt_state(applied, vote, me, &config, incarnation)?;
    kv.write(batch, true).map_err(io_error)?;
    Ok(Rebuilt {
        applied_index: applied.index,
        replayed: entries.len(),
        incarnation,
    })
}

#[cfg(test)]
mod tests {
    use bson::doc;
    use shoal_docstore::{Engine, MemKv};

    use super::*;
    use crate::types::Proposal;

    fn stored_write(index: u64, now_millis: i64) -> Vec<u8> {
        let insert = doc! {"insert": "c", "documents": [{"_id": index as i64}]};
        let entry = EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new_term_index(2, index),
            payload: EntryPayload::Normal(Proposal {
                db: "d".into(),
                command: bson::to_vec(&insert).unwrap(),
                now_millis,
                session: None,
            }),
        };
        serde_json::to_vec(&entry).unwrap()
    }

    #[test]
    fn archived_entries_replay_onto_a_checkpoint_up_to_the_cut() {
        // The "live" member: five writes at times 10..50, all applied.
        let live: Arc<dyn Kv> = Arc::new(MemKv::new());
        let mut log = WriteBatch::new();
        for index in 1..=5 {
            log.put(
                Space::RaftLog,
                index_key(index).to_vec(),
                stored_write(index, index as i64 * 10),
            );
        }
        live.write(log, true).unwrap();
        let engine = replicated_engine(Arc::clone(&live)).unwrap();
        let machine = StateMachine::replay_only(Arc::new(engine), Arc::clone(&live), 1);
        machine.apply_log_tail().unwrap();
        let page = read_applied(live.as_ref(), 2, 2, usize::MAX).unwrap();
        assert_eq!(page.applied, 5);
        assert_eq!(page.first_held, Some(1));
        let indexes: Vec<u64> = page.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, vec![3, 4]);
        assert_eq!(page.entries[0].time_millis, Some(30));
        let archived = read_applied(live.as_ref(), 2, 100, usize::MAX)
            .unwrap()
            .entries;
        assert_eq!(archived.len(), 3);

        // The "checkpoint": the first two writes applied, and an entry 3 that was never
        // committed (another primary's), which the replay must replace.
        let restored: Arc<dyn Kv> = Arc::new(MemKv::new());
        let mut log = WriteBatch::new();
        for index in 1..=2 {
            log.put(
                Space::RaftLog,
                index_key(index).to_vec(),
                stored_write(index, index as i64 * 10),
            );
        }
        restored.write(log, true).unwrap();
        let engine = replicated_engine(Arc::clone(&restored)).unwrap();
        StateMachine::replay_only(Arc::new(engine), Arc::clone(&restored), 1)
            .apply_log_tail()
            .unwrap();
        let mut stray = WriteBatch::new();
        stray.put(Space::RaftLog, index_key(3).to_vec(), stored_write(99, 25));
        restored.write(stray, true).unwrap();

        // Restore to 45: writes 3 and 4 (times 30, 40) are replayed, 5 (time 50) is not.
        let cut = entries_before(&archived, 45);
        let rebuilt =
            replay_and_rebuild(Arc::clone(&restored), "rs", "127.0.0.1:9", &archived[..cut])
                .unwrap();
        assert_eq!(rebuilt.applied_index, 4);
        assert_eq!(rebuilt.replayed, 2);
        let engine = Engine::with_kv(Arc::clone(&restored)).unwrap();
        let found = engine.execute("d", &doc! {"find": "c"});
        let ids: Vec<i64> = found
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|d| d.as_document().unwrap().get_i64("_id").unwrap())
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        // The log is gone, the only member is the new host, in a new incarnation.
        let page = read_applied(restored.as_ref(), 0, 100, usize::MAX).unwrap();
        assert_eq!(page.first_held, None);
        assert_eq!(page.applied, 4);
        assert_eq!(rebuilt.incarnation.generation, 1);
        let membership = restored
            .get(Space::RaftMeta, crate::state_machine::MEMBERSHIP_KEY)
            .unwrap()
            .unwrap();
        let text = String::from_utf8(membership).unwrap();
        assert!(text.contains("127.0.0.1:9"), "{text}");

        // Entries that do not continue the restored log are refused.
        let gap = replay_and_rebuild(restored, "rs", "127.0.0.1:9", &archived[..1]);
        assert!(gap.is_err());
    }

    /// An entry larger than a part is never in a page: it comes alone, announced, and is read
    /// in parts that reassemble to the stored bytes.
    #[test]
    fn a_large_entry_is_read_in_parts() {
        let kv: Arc<dyn Kv> = Arc::new(MemKv::new());
        let big = doc! {"insert": "c", "documents": [{"_id": 2_i64, "pad": "z".repeat(OPLOG_PART_BYTES + 1000)}]};
        let entry = EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new_term_index(2, 2),
            payload: EntryPayload::Normal(Proposal {
                db: "d".into(),
                command: bson::to_vec(&big).unwrap(),
                now_millis: 20,
                session: None,
            }),
        };
        let big_bytes = serde_json::to_vec(&entry).unwrap();
        let mut log = WriteBatch::new();
        log.put(Space::RaftLog, index_key(1).to_vec(), stored_write(1, 10));
        log.put(Space::RaftLog, index_key(2).to_vec(), big_bytes.clone());
        log.put(Space::RaftLog, index_key(3).to_vec(), stored_write(3, 30));
        kv.write(log, true).unwrap();
        let engine = replicated_engine(Arc::clone(&kv)).unwrap();
        StateMachine::replay_only(Arc::new(engine), Arc::clone(&kv), 1)
            .apply_log_tail()
            .unwrap();

        // The page stops before the large entry; the next page is only its announcement.
        let page = read_applied(kv.as_ref(), 0, 100, usize::MAX).unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.large, None);
        let page = read_applied(kv.as_ref(), 1, 100, usize::MAX).unwrap();
        assert!(page.entries.is_empty());
        let large = page.large.unwrap();
        assert_eq!(large.index, 2);
        assert_eq!(large.bytes, big_bytes.len() as u64);
        let mut assembled = Vec::new();
        for _ in 0..4 {
            let part = read_entry_part(kv.as_ref(), 2, assembled.len() as u64, OPLOG_PART_BYTES)
                .unwrap()
                .unwrap();
            assert_eq!(part.total, large.bytes);
            assert!(part.bytes.len() <= OPLOG_PART_BYTES);
            assembled.extend_from_slice(&part.bytes);
            if assembled.len() as u64 == part.total {
                break;
            }
        }
        assert_eq!(assembled, big_bytes);
        let archived = ArchivedEntry::from_stored(2, assembled).unwrap();
        assert_eq!(archived.time_millis, Some(20));
        // Unapplied and missing entries have no parts.
        assert_eq!(read_entry_part(kv.as_ref(), 4, 0, 10).unwrap(), None);
        assert_eq!(read_entry_part(kv.as_ref(), 0, 0, 10).unwrap(), None);
        let after = read_applied(kv.as_ref(), 2, 100, usize::MAX).unwrap();
        assert_eq!(after.entries.first().map(|e| e.index), Some(3));
    }

    fn entry(index: u64, time: Option<i64>) -> ArchivedEntry {
        ArchivedEntry {
            index,
            time_millis: time,
            bytes: Vec::new(),
        }
    }

    #[test]
    fn the_cut_stops_before_the_first_write_at_or_after_the_time() {
        let entries = vec![
            entry(5, Some(100)),
            entry(6, None),
            entry(7, Some(199)),
            entry(8, None),
            entry(9, Some(200)),
            entry(10, Some(150)),
        ];
        assert_eq!(entries_before(&entries, 200), 4);
        assert_eq!(entries_before(&entries, 100), 0);
        assert_eq!(entries_before(&entries, 1_000), 6);
    }
}
