//! The Raft log (MongoDB's oplog) and the vote, stored in the member's own RocksDB next to the
//! documents: column family `raft_log` holds entries under their big-endian index, `raft_meta`
//! the vote, the last purged entry and the set's incarnation.
//!
//! Sharing the RocksDB instance means one write-ahead log: every append is synced, and a sync
//! also makes durable the (unsynced) state-machine batches written before it. Written against
//! the [`Kv`] seam so that tests can run it over [`shoal_docstore::MemKv`].

use std::{fmt::Debug, io, ops::RangeBounds, sync::Arc};

use openraft::{
    LogState, OptionalSend, RaftLogReader,
    alias::{EntryOf, LogIdOf, VoteOf},
    entry::RaftEntry,
    storage::{IOFlushed, RaftLogStorage},
};
use shoal_docstore::{Kv, Space, WriteBatch};

use crate::{network::Incarnation, types::TypeConfig};

/// Entries one read returns at most; openraft asks for bounded ranges, this guards the rest.
pub const LOG_READ_ENTRIES_MAX: usize = 64 * 1024;

pub(crate) const VOTE_KEY: &[u8] = b"vote";
pub(crate) const LAST_PURGED_KEY: &[u8] = b"last_purged";
pub(crate) const COMMITTED_KEY: &[u8] = b"committed";
pub(crate) const INCARNATION_KEY: &[u8] = b"incarnation";

/// The incarnation of the set stored in `kv` (BSON), if any.
pub(crate) fn read_incarnation(kv: &dyn Kv) -> io::Result<Option<Incarnation>> {
    let Some(bytes) = kv.get(Space::RaftMeta, INCARNATION_KEY).map_err(io_error)? else {
        return Ok(None);
    };
    let document = bson::Document::from_reader(&mut bytes.as_slice())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Incarnation::from_document(&document)
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed incarnation"))
}

/// Stores `incarnation` (or removes it), synced: messages carry it once this returns.
pub(crate) fn write_incarnation(kv: &dyn Kv, incarnation: Option<Incarnation>) -> io::Result<()> {
    let mut batch = WriteBatch::new();
    put_incarnation(&mut batch, incarnation)?;
    kv.write(batch, true).map_err(io_error)
}

/// Adds the storage of `incarnation` (or its removal) to `batch`.
pub(crate) fn put_incarnation(
    batch: &mut WriteBatch,
    incarnation: Option<Incarnation>,
) -> io::Result<()> {
    match incarnation {
        Some(incarnation) => {
            let bytes = bson::to_vec(&incarnation.to_document()).map_err(io_error)?;
            batch.put(Space::RaftMeta, INCARNATION_KEY.to_vec(), bytes);
        }
        None => batch.delete(Space::RaftMeta, INCARNATION_KEY.to_vec()),
    }
    Ok(())
}

/// The log store; cheap to clone (it is a handle on the shared storage).
#[derive(Clone)]
pub struct LogStore {
    kv: Arc<dyn Kv>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn io_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    /// A log store over `kv` (which must be the member's storage, so that appends and applies
    /// share one write-ahead log).
    pub fn new(kv: Arc<dyn Kv>) -> LogStore {
        LogStore { kv }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.kv.get(Space::RaftMeta, key).map_err(io_error)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T, sync: bool) -> io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io_error)?;
        let mut batch = WriteBatch::new();
        batch.put(Space::RaftMeta, key.to_vec(), bytes);
        self.kv.write(batch, sync).map_err(io_error)
    }

    /// Decodes one stored entry, checking it sits under its own index.
    pub(crate) fn decode(key: &[u8], value: &[u8]) -> io::Result<EntryOf<TypeConfig>> {
        let entry: EntryOf<TypeConfig> = serde_json::from_slice(value)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let index = <[u8; 8]>::try_from(key)
            .map(u64::from_be_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "log key is not 8 bytes"))?;
        if entry.index() != index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("log entry {} stored under index {index}", entry.index()),
            ));
        }
        Ok(entry)
    }

    /// The last entry present, if any.
    fn last_entry(&self) -> io::Result<Option<EntryOf<TypeConfig>>> {
        let last = self
            .kv
            .scan_reverse(Space::RaftLog, &index_key(0), &[0xff; 9], 1)
            .map_err(io_error)?;
        match last.first() {
            Some((key, value)) => Self::decode(key, value).map(Some),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end: Vec<u8> = match range.end_bound() {
            Bound::Included(x) => match x.checked_add(1) {
                Some(next) => index_key(next).to_vec(),
                None => vec![0xff; 9],
            },
            Bound::Excluded(x) => index_key(*x).to_vec(),
            Bound::Unbounded => vec![0xff; 9],
        };
        let pairs = self
            .kv
            .scan(
                Space::RaftLog,
                &index_key(start),
                &end,
                LOG_READ_ENTRIES_MAX,
            )
            .map_err(io_error)?;
        pairs
            .iter()
            .map(|(key, value)| Self::decode(key, value))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.get_meta(VOTE_KEY)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogIdOf<TypeConfig>> = self.get_meta(LAST_PURGED_KEY)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        // A vote must be durable before it is granted, or a restarted member could vote twice
        // in one term.
        self.put_meta(VOTE_KEY, vote, true)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        self.put_meta(COMMITTED_KEY, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self
            .get_meta::<Option<LogIdOf<TypeConfig>>>(COMMITTED_KEY)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        for entry in entries {
            let value = serde_json::to_vec(&entry).map_err(io_error)?;
            batch.put(Space::RaftLog, index_key(entry.index()).to_vec(), value);
        }
        // Synced before the callback: an entry counts towards a majority only once durable,
        // which is what makes `w: "majority"` (and `j: true`) mean what they say.
        let result = self.kv.write(batch, true).map_err(io_error);
        let failed = result
            .as_ref()
            .err()
            .map(|e| io::Error::other(e.to_string()));
        callback.io_completed(result);
        match failed {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let mut batch = WriteBatch::new();
        batch.delete_range(Space::RaftLog, index_key(from).to_vec(), vec![0xff; 9]);
        self.kv.write(batch, true).map_err(io_error)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        // The marker first: entries at or below it are ignored even if the range delete is lost.
        self.put_meta(LAST_PURGED_KEY, &log_id, true)?;
        let mut batch = WriteBatch::new();
        batch.delete_range(
            Space::RaftLog,
            index_key(0).to_vec(),
            index_key(log_id.index() + 1).to_vec(),
        );
        self.kv.write(batch, false).map_err(io_error)
    }
}
