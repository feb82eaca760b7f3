//! `_shoalCheckpoint`: a RocksDB checkpoint of this member's storage, the unit of a physical
//! backup (`shoal backup create`).
//!
//! The checkpoint is a consistent copy of every column family as of one instant (documents,
//! catalog, the Raft log and the replication state), made without stopping writes: RocksDB
//! flushes its memtables and hard-links the immutable SST files into the new directory. The
//! command runs on any member, primary or secondary, and changes nothing replicated (the flush
//! touches only this member's files), so it is not a log entry.
//!
//! The reply says which log entry the checkpoint reflects. It is read back from the checkpoint
//! itself (opened read-only) rather than from the live member, which may have applied more by
//! the time the checkpoint exists: the applied position is written in the same batch as each
//! entry's writes, so the copy's own record is exact.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use bson::{Bson, Document, doc};
use openraft::{EntryPayload, alias::EntryOf, alias::LogIdOf};
use shoal_common::{CommandError, ErrorCode};
use shoal_docstore::{CheckpointFile, Kv, RocksKv, Space, StoreError};
use shoal_repl::{state_machine::INSTALLING_KEY, types::TypeConfig};

/// The directory of the RocksDB database inside a member's data directory. A restored backup
/// puts the checkpoint's files there, so the member opens them as its own.
pub const DB_SUBDIR: &str = "db";
/// Where checkpoints go when the command names no directory: next to `db`, on the same file
/// system, so SST files are hard links and the checkpoint costs almost no space or time.
pub const CHECKPOINTS_SUBDIR: &str = "checkpoints";
/// Log entries read, backwards from the last applied one, to find the time of the last write
/// (blank and membership entries carry none).
pub const ENTRY_TIME_LOOKBACK_ENTRIES: usize = 64;
/// The replication state's record of the last applied log id (`raft_meta`), as
/// `shoal_repl::state_machine` writes it (JSON of `Option<LogId>`). The key is private to that
/// module; it is repeated here until shoal-repl offers a reader over any [`Kv`].
const APPLIED_KEY: &[u8] = b"sm_applied";

/// Distinguishes default checkpoint directories made in the same millisecond.
static CHECKPOINTS_MADE: AtomicU64 = AtomicU64::new(0);

/// Why a checkpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The member was installing a snapshot: the checkpoint caught its documents half replaced
    /// (and was removed). Another member, or this one a little later, can make one.
    #[error("the member is installing a snapshot; ask another member or retry")]
    Installing,
    /// `dir` is not an absolute path (a relative one would depend on the server's working
    /// directory).
    #[error("dir must be an absolute path, got {0:?}")]
    RelativeDir(String),
    /// `dir` already exists; a checkpoint never writes into an existing directory.
    #[error("checkpoint directory {0} already exists")]
    DirExists(String),
    /// The parent of the checkpoint directory could not be created.
    #[error("cannot create {path}: {reason}")]
    Prepare {
        /// The directory.
        path: String,
        /// The operating system's error.
        reason: String,
    },
    /// RocksDB failed to write or read the checkpoint.
    #[error("checkpoint failed: {0}")]
    Storage(#[from] StoreError),
    /// The checkpoint's replication record does not decode.
    #[error("the checkpoint's last applied log id does not decode: {0}")]
    CorruptApplied(String),
}

impl From<CheckpointError> for CommandError {
    fn from(error: CheckpointError) -> CommandError {
        let code = match &error {
            CheckpointError::RelativeDir(_) => ErrorCode::BAD_VALUE,
            CheckpointError::DirExists(_) => ErrorCode::ILLEGAL_OPERATION,
            CheckpointError::Prepare { .. } => ErrorCode::OPERATION_FAILED,
            CheckpointError::Storage(_) => ErrorCode::UNKNOWN_ERROR,
            CheckpointError::CorruptApplied(_) => ErrorCode::INTERNAL_ERROR,
            CheckpointError::Installing => ErrorCode::NOT_PRIMARY_OR_SECONDARY,
        };
        CommandError::new(code, error.to_string())
    }
}

/// The last log entry a checkpoint reflects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AppliedPosition {
    /// The entry's index (0: nothing applied).
    pub index: u64,
    /// The term of the primary that wrote it.
    pub term: u64,
}

/// A checkpoint made by [`create`].
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Where it is.
    pub dir: PathBuf,
    /// The last entry applied in it.
    pub applied: AppliedPosition,
    /// The proposal time of the last write applied in it (ms since the epoch); the time of the
    /// checkpoint when no write is found (see `applied_time_exact`).
    pub applied_time_millis: i64,
    /// Whether `applied_time_millis` comes from a log entry.
    pub applied_time_exact: bool,
    /// Its files, sorted by name.
    pub files: Vec<CheckpointFile>,
}

impl Checkpoint {
    /// The command reply (`ok: 1` and the checkpoint's description).
    pub fn to_reply(&self, set: &str, member: &str) -> Document {
        let files: Vec<Bson> = self
            .files
            .iter()
            .map(|file| {
                Bson::Document(doc! {
                    "name": file.name.clone(),
                    "size": i64::try_from(file.size).unwrap_or(i64::MAX),
                })
            })
            .collect();
        doc! {
            "dir": self.dir.display().to_string(),
            "set": set,
            "member": member,
            "dbSubdir": DB_SUBDIR,
            "appliedIndex": i64::try_from(self.applied.index).unwrap_or(i64::MAX),
            "appliedTerm": i64::try_from(self.applied.term).unwrap_or(i64::MAX),
            "appliedTime": bson::DateTime::from_millis(self.applied_time_millis),
            "appliedTimeExact": self.applied_time_exact,
            "files": files,
            "ok": 1.0,
        }
    }
}

/// The checkpoint directory `command` asks for: its `dir` (absolute), or a new directory under
/// `<member_dir>/checkpoints/` when it names none.
pub fn requested_dir(command: &Document, member_dir: &Path) -> Result<PathBuf, CommandError> {
    match command.get("dir") {
        Some(Bson::String(dir)) => {
            let path = PathBuf::from(dir);
            if !path.is_absolute() {
                return Err(CheckpointError::RelativeDir(dir.clone()).into());
            }
            Ok(path)
        }
        Some(other) => Err(CommandError::type_mismatch("dir", "string", other)),
        None => {
            let sequence = CHECKPOINTS_MADE.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}-{sequence}", bson::DateTime::now().timestamp_millis());
            Ok(member_dir.join(CHECKPOINTS_SUBDIR).join(name))
        }
    }
}

/// Makes a checkpoint of `storage` in `dir` (which must not exist; its parents are created) and
/// reads back the position it reflects. Blocks: call it off the async threads.
pub fn create(storage: &RocksKv, dir: &Path) -> Result<Checkpoint, CheckpointError> {
    if dir.exists() {
        return Err(CheckpointError::DirExists(dir.display().to_string()));
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|error| CheckpointError::Prepare {
            path: parent.display().to_string(),
            reason: error.to_string(),
        })?;
    }
    let files = storage.checkpoint(dir)?;
    let copy = RocksKv::open_read_only(dir)?;
    if copy.get(Space::RaftMeta, INSTALLING_KEY)?.is_some() {
        drop(copy);
        if let Err(error) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), %error, "removing a refused checkpoint");
        }
        return Err(CheckpointError::Installing);
    }
    let applied = applied_position(&copy)?;
    let entry_time = last_write_time(&copy, applied.index);
    drop(copy);
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        applied,
        applied_time_millis: entry_time.unwrap_or_else(|| bson::DateTime::now().timestamp_millis()),
        applied_time_exact: entry_time.is_some(),
        files,
    })
}

/// The last applied log id recorded in `kv` (zero when nothing was applied).
fn applied_position(kv: &dyn Kv) -> Result<AppliedPosition, CheckpointError> {
    let Some(bytes) = kv.get(Space::RaftMeta, APPLIED_KEY)? else {
        return Ok(AppliedPosition::default());
    };
    let log_id: Option<LogIdOf<TypeConfig>> = serde_json::from_slice(&bytes)
        .map_err(|error| CheckpointError::CorruptApplied(error.to_string()))?;
    Ok(
        log_id.map_or_else(AppliedPosition::default, |log_id| AppliedPosition {
            index: log_id.index,
            term: log_id.leader_id.term,
        }),
    )
}

/// The proposal time of the last write at or before entry `index`, from the log in `kv`, if one
/// is among the [`ENTRY_TIME_LOOKBACK_ENTRIES`] entries before it (the log may be purged).
fn last_write_time(kv: &dyn Kv, index: u64) -> Option<i64> {
    let end = index.checked_add(1)?.to_be_bytes();
    let entries = kv
        .scan_reverse(
            Space::RaftLog,
            &0u64.to_be_bytes(),
            &end,
            ENTRY_TIME_LOOKBACK_ENTRIES,
        )
        .ok()?;
    entries.iter().find_map(|(_, value)| {
        let entry: EntryOf<TypeConfig> = serde_json::from_slice(value).ok()?;
        match entry.payload {
            EntryPayload::Normal(proposal) => Some(proposal.now_millis),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use shoal_docstore::WriteBatch;

    use super::*;

    #[test]
    fn dirs_are_absolute_or_next_to_the_data() {
        let member = Path::new("/data/m1");
        let given = requested_dir(&doc! {"_shoalCheckpoint": 1, "dir": "/x/y"}, member).unwrap();
        assert_eq!(given, PathBuf::from("/x/y"));
        let relative = requested_dir(&doc! {"_shoalCheckpoint": 1, "dir": "y"}, member);
        assert_eq!(relative.unwrap_err().code, ErrorCode::BAD_VALUE);
        let wrong = requested_dir(&doc! {"_shoalCheckpoint": 1, "dir": 3}, member);
        assert_eq!(wrong.unwrap_err().code, ErrorCode::TYPE_MISMATCH);
        let first = requested_dir(&doc! {"_shoalCheckpoint": 1}, member).unwrap();
        let second = requested_dir(&doc! {"_shoalCheckpoint": 1}, member).unwrap();
        assert!(first.starts_with("/data/m1/checkpoints"), "{first:?}");
        assert_ne!(first, second);
    }

    #[test]
    fn a_checkpoint_reports_its_own_applied_position_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let storage = RocksKv::open(&dir.path().join(DB_SUBDIR)).unwrap();
        let empty = create(&storage, &dir.path().join("c0")).unwrap();
        assert_eq!(empty.applied, AppliedPosition::default());
        assert!(!empty.applied_time_exact);

        let log_id = |index| LogIdOf::<TypeConfig>::new_term_index(3, index);
        let proposal = shoal_repl::types::Proposal {
            db: "d".into(),
            command: Vec::new(),
            now_millis: 1234,
            session: None,
        };
        let normal: EntryOf<TypeConfig> = openraft::Entry {
            log_id: log_id(1),
            payload: EntryPayload::Normal(proposal),
        };
        let blank: EntryOf<TypeConfig> = openraft::Entry {
            log_id: log_id(2),
            payload: EntryPayload::Blank,
        };
        let mut batch = WriteBatch::new();
        let applied = serde_json::to_vec(&Some(log_id(2))).unwrap();
        batch.put(Space::RaftMeta, APPLIED_KEY.to_vec(), applied);
        for (index, entry) in [(1u64, normal), (2, blank)] {
            let bytes = serde_json::to_vec(&entry).unwrap();
            batch.put(Space::RaftLog, index.to_be_bytes().to_vec(), bytes);
        }
        storage.write(batch, false).unwrap();
        let target = dir.path().join("nested").join("c1");
        let checkpoint = create(&storage, &target).unwrap();
        assert_eq!(checkpoint.applied, AppliedPosition { index: 2, term: 3 });
        assert_eq!(checkpoint.applied_time_millis, 1234);
        assert!(checkpoint.applied_time_exact);
        let reply = checkpoint.to_reply("rs", "h:1");
        assert_eq!(reply.get_i64("appliedIndex").unwrap(), 2);
        assert_eq!(
            reply.get_array("files").unwrap().len(),
            checkpoint.files.len()
        );
        let again = create(&storage, &target).unwrap_err();
        assert!(matches!(again, CheckpointError::DirExists(_)), "{again}");
    }
}
