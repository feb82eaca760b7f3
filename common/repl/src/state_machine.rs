//! The state machine: applies committed log entries to the document engine, one atomic storage
//! batch per entry.
//!
//! An entry is a write command. Applying it runs the command through the engine with the
//! entry's clock and ObjectId seed (so every member computes the same documents), captures the
//! engine's storage writes instead of letting them through ([`DeferringKv`]), and writes them
//! together with the new last-applied position and the retryable-write session record as one
//! batch, through the engine's tracked storage (where a donor's migration notes them as they
//! land; see [`replicated_engine`]). A crash therefore never leaves half an entry applied, and an entry is never applied
//! twice.
//!
//! Retryable writes: a proposal carrying a session statement whose result is already recorded
//! returns the recorded reply instead of executing again, whichever member proposed it. The
//! record travels in the same batch as the write, so it is replicated with it.

use std::{
    cell::RefCell,
    io,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use bson::{Bson, Document, doc};
use futures::{Stream, TryStreamExt};
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership,
    alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf},
    storage::{EntryResponder, RaftStateMachine},
};
use shoal_common::{
    CommandError, ErrorCode,
    determinism::{self, Deterministic},
};
use shoal_docstore::{
    Engine, Kv, KvPair, KvRange, PairVisitor, Space, StoreError, WriteBatch, WriteOp,
};

use crate::{
    snapshot::{self, SnapshotFile, SnapshotStore},
    types::{Applied, NodeId, Proposal, SessionStatement, TypeConfig},
};

pub(crate) const APPLIED_KEY: &[u8] = b"sm_applied";
pub(crate) const MEMBERSHIP_KEY: &[u8] = b"sm_membership";
const SESSION_PREFIX: &[u8] = b"sess/";
const SESSION_END: &[u8] = b"sess0";

/// Present while a snapshot install is under way: the name of the snapshot file in the member's
/// snapshot directory. A member that finds it at start finishes the install before anything
/// else; a checkpoint holding it is refused (its documents are half replaced).
pub const INSTALLING_KEY: &[u8] = b"sm_installing";
/// Bytes of pairs one snapshot-install batch writes (an install is not one atomic batch; the
/// [`INSTALLING_KEY`] marker makes it redoable instead).
const INSTALL_BATCH_BYTES: usize = 8 << 20;
/// Log entries a forced reconfiguration reads per page while applying the log's tail (an
/// entry can be a 48 MB write command).
const LOG_TAIL_PAGE_ENTRIES: usize = 16;
/// How long a retryable-write record outlives its last use: MongoDB's session timeout
/// (`logicalSessionTimeoutMinutes`, 30). A retry after that is executed again, as in MongoDB.
pub const SESSION_TIMEOUT_MILLIS: i64 = 30 * 60 * 1000;
/// Every this many entries, apply also removes expired session records (decided from the entry's
/// time and the state, so every member removes the same ones).
pub const SESSION_SWEEP_EVERY_ENTRIES: u64 = 4096;
/// Session records one sweep removes at most; the next sweep continues.
pub const SESSION_SWEEP_MAX: usize = 10_000;
/// Statement results kept per session record (a retried batch is looked up by its first
/// statement id).
pub const SESSION_RESULTS_MAX: usize = 1024;

thread_local! {
    static DEFERRED: RefCell<Option<Vec<WriteOp>>> = const { RefCell::new(None) };
}

/// The engine's storage during replication: writes made by an apply on this thread are held
/// back and handed to the apply, which commits them in its own batch; any other write goes
/// straight through.
pub struct DeferringKv {
    inner: Arc<dyn Kv>,
}

impl DeferringKv {
    /// Wraps the member's storage.
    pub fn new(inner: Arc<dyn Kv>) -> DeferringKv {
        DeferringKv { inner }
    }
}

impl Kv for DeferringKv {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KvPair>, StoreError> {
        self.inner.scan(space, start, end, limit)
    }

    fn scan_reverse(
        &self,
        space: Space,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KvPair>, StoreError> {
        self.inner.scan_reverse(space, start, end, limit)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let batch = DEFERRED.with(|deferred| match &mut *deferred.borrow_mut() {
            Some(held) => {
                // Every engine command writes once, at its end, so nothing reads these back
                // before the apply commits them. A second write would mean a command read
                // state this apply has not written yet: say so loudly.
                if !held.is_empty() {
                    tracing::error!("an engine command wrote twice during one apply");
                }
                held.extend(batch.ops);
                None
            }
            None => Some(batch),
        });
        match batch {
            Some(batch) => self.inner.write(batch, sync),
            None => Ok(()),
        }
    }

    fn visit_consistent(
        &self,
        ranges: &[KvRange],
        frozen: &mut dyn FnMut(),
        visit: &mut PairVisitor<'_>,
    ) -> Result<(), StoreError> {
        self.inner.visit_consistent(ranges, frozen, visit)
    }
}

/// The engine of a replica-set member over its storage: commands write through a
/// [`DeferringKv`], and applies commit what it held back through the engine's tracked storage
/// (a migration's change tracking must see each write when it lands, not when the engine makes
/// it; see `shoal_docstore::Engine::with_captured_writes`).
pub fn replicated_engine(storage: Arc<dyn Kv>) -> Result<Engine, StoreError> {
    Engine::with_captured_writes(storage, |tracked| Arc::new(DeferringKv::new(tracked)))
}

/// Runs `f` with this thread's engine writes captured; returns its result and the writes.
fn capture_writes<T>(f: impl FnOnce() -> T) -> (T, Vec<WriteOp>) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            DEFERRED.with(|d| *d.borrow_mut() = None);
        }
    }
    DEFERRED.with(|d| *d.borrow_mut() = Some(Vec::new()));
    let reset = Reset;
    let value = f();
    let ops = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
    drop(reset);
    (value, ops)
}

fn io_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

/// Counters of applied entries, for `serverStatus` (`opcountersRepl`-like).
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Write commands applied.
    pub commands: AtomicU64,
    /// Retried statements answered from a session record.
    pub deduplicated: AtomicU64,
}

/// The last snapshot built or installed, kept (as a file) to serve lagging members.
type CurrentSnapshot = (SnapshotMetaOf<TypeConfig>, SnapshotFile);

/// The replicated state machine over the member's engine.
#[derive(Clone)]
pub struct StateMachine {
    engine: Arc<Engine>,
    kv: Arc<dyn Kv>,
    me: NodeId,
    /// `secondaryDelaySecs` of this member, from the latest applied membership.
    delay_secs: Arc<AtomicU32>,
    apply_lock: Arc<Mutex<()>>,
    /// Where snapshots are written; `None` for a state machine that only replays a log
    /// ([`StateMachine::replay_only`]).
    snapshots: Option<Arc<SnapshotStore>>,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
    /// True while a snapshot install replaces the state: reads must not see it half done.
    installing: Arc<AtomicBool>,
    /// Set (under `apply_lock`) when a forced reconfiguration hands the storage to a new Raft
    /// instance: the old instance's applies then fail instead of writing. In memory only.
    fenced: Arc<AtomicBool>,
    /// Apply statistics.
    pub stats: Arc<ApplyStats>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// A state machine applying to `engine`, built over `kv` by [`replicated_engine`], keeping
    /// its snapshots in `snapshots`.
    pub fn new(
        engine: Arc<Engine>,
        kv: Arc<dyn Kv>,
        me: NodeId,
        snapshots: Arc<SnapshotStore>,
    ) -> StateMachine {
        StateMachine::with_snapshots(engine, kv, me, Some(snapshots))
    }

    /// A state machine that applies a log tail ([`StateMachine::apply_log_tail`]) and never
    /// builds or installs a snapshot: a restore's replay.
    pub(crate) fn replay_only(engine: Arc<Engine>, kv: Arc<dyn Kv>, me: NodeId) -> StateMachine {
        StateMachine::with_snapshots(engine, kv, me, None)
    }

    fn with_snapshots(
        engine: Arc<Engine>,
        kv: Arc<dyn Kv>,
        me: NodeId,
        snapshots: Option<Arc<SnapshotStore>>,
    ) -> StateMachine {
        StateMachine {
            engine,
            kv,
            me,
            delay_secs: Arc::new(AtomicU32::new(0)),
            apply_lock: Arc::new(Mutex::new(())),
            snapshots,
            current: Arc::new(Mutex::new(None)),
            installing: Arc::new(AtomicBool::new(false)),
            fenced: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(ApplyStats::default()),
        }
    }

    /// Fences this state machine (every later apply, install or snapshot by its Raft instance
    /// fails) and returns a fresh one over the same storage for a new Raft instance: no snapshot
    /// held, the statistics kept. Waits for an apply in progress to finish.
    pub(crate) fn successor(&self) -> StateMachine {
        let _guard = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.fenced.store(true, Ordering::Release);
        StateMachine {
            stats: Arc::clone(&self.stats),
            ..StateMachine::with_snapshots(
                Arc::clone(&self.engine),
                Arc::clone(&self.kv),
                self.me,
                self.snapshots.clone(),
            )
        }
    }

    /// Removes every snapshot file (a forced reconfiguration: they carry the old incarnation's
    /// membership).
    pub(crate) fn remove_snapshots(&self) -> io::Result<()> {
        let _guard = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self
            .kv
            .get(Space::RaftMeta, INSTALLING_KEY)
            .map_err(io_error)?
            .is_some()
        {
            // The data is half replaced; a restart finishes the install from its file.
            return Err(io_error(
                "a snapshot install was interrupted on this member: restart it (the install \
                 finishes at start), then force the reconfiguration",
            ));
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        match &self.snapshots {
            Some(snapshots) => snapshots.remove_all(),
            None => Ok(()),
        }
    }

    /// The snapshot directory, or an error for a replay-only state machine.
    fn snapshot_store(&self) -> io::Result<&SnapshotStore> {
        self.snapshots
            .as_deref()
            .ok_or_else(|| io_error("this state machine only replays a log; it has no snapshots"))
    }

    /// The snapshot directory, shared (chunks of a snapshot being received land there).
    pub(crate) fn snapshot_store_handle(&self) -> io::Result<Arc<SnapshotStore>> {
        self.snapshots
            .clone()
            .ok_or_else(|| io_error("this state machine only replays a log; it has no snapshots"))
    }

    /// Whether a snapshot install is replacing this member's data right now.
    pub fn is_installing(&self) -> bool {
        self.installing.load(Ordering::Acquire)
    }

    fn check_not_fenced(&self) -> io::Result<()> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(io_error(
                "this raft instance was replaced by a forced reconfiguration",
            ));
        }
        Ok(())
    }

    /// Applies every entry of the log after the last applied one, committed or not, and
    /// returns the last applied entry's id: a forced reconfiguration keeps everything the
    /// survivor received (as a MongoDB secondary has applied all of its oplog). Ignores
    /// `secondaryDelaySecs`.
    pub(crate) fn apply_log_tail(&self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        let _guard = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.check_not_fenced()?;
        loop {
            let applied: Option<LogIdOf<TypeConfig>> = self.read_json(APPLIED_KEY)?.flatten();
            let from = applied.map_or(0, |id| id.index + 1);
            let page = self
                .kv
                .scan(
                    Space::RaftLog,
                    &crate::log_store::index_key(from),
                    &[0xff; 9],
                    LOG_TAIL_PAGE_ENTRIES,
                )
                .map_err(io_error)?;
            if page.is_empty() {
                return Ok(applied);
            }
            for (key, value) in &page {
                let entry = crate::log_store::LogStore::decode(key, value)?;
                self.apply_entry_locked(&entry)?;
            }
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.kv.get(Space::RaftMeta, key).map_err(io_error)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            None => Ok(None),
        }
    }

    fn note_membership(&self, membership: &StoredMembershipOf<TypeConfig>) {
        let delay = membership
            .membership()
            .get_node(&self.me)
            .map_or(0, |node| node.secondary_delay_secs);
        self.delay_secs.store(delay, Ordering::Relaxed);
    }

    /// Applies one entry synchronously; returns the reply for its proposer.
    fn apply_entry(&self, entry: &openraft::alias::EntryOf<TypeConfig>) -> io::Result<Applied> {
        let _guard = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.check_not_fenced()?;
        self.apply_entry_locked(entry)
    }

    /// [`StateMachine::apply_entry`] with `apply_lock` already held.
    fn apply_entry_locked(
        &self,
        entry: &openraft::alias::EntryOf<TypeConfig>,
    ) -> io::Result<Applied> {
        let log_id = entry.log_id;
        let mut batch = WriteBatch::new();
        let applied = match &entry.payload {
            EntryPayload::Blank => Applied::default(),
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(log_id), membership.clone());
                batch.put(
                    Space::RaftMeta,
                    MEMBERSHIP_KEY.to_vec(),
                    serde_json::to_vec(&stored).map_err(io_error)?,
                );
                self.note_membership(&stored);
                Applied::default()
            }
            EntryPayload::Normal(proposal) => {
                let reply = self.apply_proposal(log_id.index, proposal, &mut batch)?;
                if log_id.index.is_multiple_of(SESSION_SWEEP_EVERY_ENTRIES) {
                    self.sweep_sessions(proposal.now_millis, &mut batch)?;
                }
                Applied {
                    reply: bson::to_vec(&reply).map_err(io_error)?,
                }
            }
        };
        batch.put(
            Space::RaftMeta,
            APPLIED_KEY.to_vec(),
            serde_json::to_vec(&Some(log_id)).map_err(io_error)?,
        );
        self.commit_applied(batch)?;
        Ok(applied)
    }

    /// Writes an applied entry's batch (the engine's held-back writes and the bookkeeping)
    /// through the engine's tracked storage, so a migration of the donor notes the documents in
    /// the same step as they become readable.
    fn commit_applied(&self, batch: WriteBatch) -> io::Result<()> {
        // Not synced: the entry is already durable in the log (same write-ahead log), and a
        // crash before the next sync re-applies it from there.
        self.engine
            .tracked_storage()
            .write(batch, false)
            .map_err(io_error)
    }

    fn apply_proposal(
        &self,
        index: u64,
        proposal: &Proposal,
        batch: &mut WriteBatch,
    ) -> io::Result<Document> {
        let command = match Document::from_reader(&mut proposal.command.as_slice()) {
            Ok(command) => command,
            Err(error) => {
                // The primary encoded it; a corrupt entry must not stop the member.
                tracing::error!(index, %error, "undecodable replicated command");
                return Ok(CommandError::internal("undecodable replicated command").to_document());
            }
        };
        let mut record = None;
        if let Some(session) = &proposal.session {
            let (existing, stored) = self.session_lookup(session)?;
            if let Some(reply) = stored {
                self.stats.deduplicated.fetch_add(1, Ordering::Relaxed);
                return Ok(reply);
            }
            if let Some(existing) = &existing
                && existing.get_i64("txn").unwrap_or(i64::MIN) > session.txn_number
            {
                return Ok(CommandError::new(
                    ErrorCode::TRANSACTION_TOO_OLD,
                    format!(
                        "Retryable write with txnNumber {} is prohibited on session because a newer retryable write has been started",
                        session.txn_number
                    ),
                )
                .to_document());
            }
            record = Some(existing);
        }
        let fixed = Deterministic {
            now_millis: proposal.now_millis,
            seed: index,
        };
        let (reply, ops) = capture_writes(|| {
            determinism::with_context(fixed, || self.engine.execute(&proposal.db, &command))
        });
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        batch.ops.extend(ops);
        if let (Some(session), Some(existing)) = (&proposal.session, record)
            && matches!(reply.get("ok"), Some(Bson::Double(ok)) if *ok == 1.0)
        {
            let updated = session_record(existing, session, &reply, proposal.now_millis);
            batch.put(
                Space::RaftMeta,
                session_key(&session.lsid),
                bson::to_vec(&updated).map_err(io_error)?,
            );
        }
        Ok(reply)
    }

    /// Adds to `batch` the removal of session records unused since `now - SESSION_TIMEOUT`.
    fn sweep_sessions(&self, now_millis: i64, batch: &mut WriteBatch) -> io::Result<()> {
        let pairs = self
            .kv
            .scan(
                Space::RaftMeta,
                SESSION_PREFIX,
                SESSION_END,
                SESSION_SWEEP_MAX,
            )
            .map_err(io_error)?;
        let cutoff = now_millis.saturating_sub(SESSION_TIMEOUT_MILLIS);
        for (key, value) in pairs {
            let last_use = Document::from_reader(&mut value.as_slice())
                .ok()
                .and_then(|record| record.get_i64("lastUse").ok())
                .unwrap_or(i64::MIN);
            if last_use < cutoff {
                batch.delete(Space::RaftMeta, key);
            }
        }
        Ok(())
    }

    /// The session's record and, when this statement already ran, its recorded reply.
    fn session_lookup(
        &self,
        session: &SessionStatement,
    ) -> io::Result<(Option<Document>, Option<Document>)> {
        let Some(bytes) = self
            .kv
            .get(Space::RaftMeta, &session_key(&session.lsid))
            .map_err(io_error)?
        else {
            return Ok((None, None));
        };
        let record = Document::from_reader(&mut bytes.as_slice())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let stored = (record.get_i64("txn").ok() == Some(session.txn_number))
            .then(|| {
                record
                    .get_document("results")
                    .ok()
                    .and_then(|results| results.get_document(session.stmt.to_string()).ok())
                    .cloned()
            })
            .flatten()
            .and_then(|mut reply| {
                // Only the same statements get the recorded reply; another request that starts
                // with the same statement executes.
                let recorded = reply.remove(STATEMENTS_FIELD);
                let same = match recorded {
                    Some(Bson::Int64(digest)) => digest as u64 == session.stmts,
                    _ => true,
                };
                same.then_some(reply)
            });
        Ok((Some(record), stored))
    }

    /// Writes a snapshot of the applied state to a file. Applies are held off only while the
    /// store's point-in-time read is set up; the file is written while they go on.
    fn snapshot_now(&self) -> io::Result<SnapshotOf<TypeConfig, SnapshotFile>> {
        let mut guard = Some(
            self.apply_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let last_applied: Option<LogIdOf<TypeConfig>> = self.read_json(APPLIED_KEY)?.flatten();
        let membership: StoredMembershipOf<TypeConfig> =
            self.read_json(MEMBERSHIP_KEY)?.unwrap_or_default();
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: last_applied,
            last_membership: membership,
        };
        let mut writer = self.snapshot_store()?.writer(&meta)?;
        self.kv
            .visit_consistent(
                &snapshot_ranges(),
                &mut || drop(guard.take()),
                &mut |space, key, value| {
                    writer
                        .pair(space, key, value)
                        .map_err(|e| StoreError::Backend(format!("writing a snapshot: {e}")))
                },
            )
            .map_err(io_error)?;
        drop(guard);
        let bytes = writer.bytes();
        let built = writer.finish()?;
        let _guard = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A forced reconfiguration removed this incarnation's snapshots: do not add one back.
        self.check_not_fenced()?;
        let file = self.snapshot_store()?.adopt(&built, &meta)?;
        self.set_current(&meta, &file);
        tracing::info!(last = ?meta.last_log_id, bytes, "built snapshot");
        Ok(SnapshotOf::<TypeConfig, SnapshotFile> {
            meta,
            snapshot: file,
        })
    }

    /// Makes `file` the snapshot served to lagging members unless a newer one already is (a
    /// build that started before an install may end after it), and removes the others.
    fn set_current(&self, meta: &SnapshotMetaOf<TypeConfig>, file: &SnapshotFile) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = match &*current {
            Some((held, held_file)) if held.last_log_id > meta.last_log_id => held_file.clone(),
            _ => {
                *current = Some((meta.clone(), file.clone()));
                file.clone()
            }
        };
        if let Some(snapshots) = &self.snapshots
            && let Err(error) = snapshots.remove_others(&keep)
        {
            tracing::warn!(%error, "removing older snapshot files");
        }
    }

    /// Replaces the state with the snapshot in `file` (received from the primary, anywhere on
    /// disk). The file is checked whole before anything changes.
    fn install(&self, meta: &SnapshotMetaOf<TypeConfig>, file: &SnapshotFile) -> io::Result<()> {
        let (file_meta, pairs) = snapshot::verify(file.path())?;
        if file_meta != *meta {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the snapshot file's metadata is not the snapshot's",
            ));
        }
        let _guard = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.check_not_fenced()?;
        let adopted = self.snapshot_store()?.adopt(file, meta)?;
        self.install_locked(meta, &adopted)?;
        self.set_current(meta, &adopted);
        let bytes = adopted.bytes().unwrap_or(0);
        tracing::info!(last = ?meta.last_log_id, pairs, bytes, "installed snapshot");
        Ok(())
    }

    /// The install proper, with `apply_lock` held and `file` checked and in the snapshot
    /// directory. First one batch clears the state and sets [`INSTALLING_KEY`]; then the pairs
    /// go in bounded batches; the last batch records the position and removes the marker. A
    /// crash in between leaves the marker, and [`StateMachine::finish_interrupted_install`]
    /// redoes it all at start.
    fn install_locked(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        file: &SnapshotFile,
    ) -> io::Result<()> {
        let name = file
            .path()
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .ok_or_else(|| io_error("a snapshot file without a name"))?;
        let store = self.snapshot_store()?;
        // Until the marker is gone, a restart needs this file: no clean-up may remove it.
        store.protect(Some(file));
        self.installing.store(true, Ordering::Release);
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.installing);
        let mut batch = WriteBatch::new();
        for (space, start, end) in snapshot_ranges() {
            batch.delete_range(space, start, end);
        }
        batch.put(Space::RaftMeta, INSTALLING_KEY.to_vec(), name.into_bytes());
        self.kv.write(batch, true).map_err(io_error)?;
        let mut batch = WriteBatch::new();
        let mut batch_bytes = 0;
        snapshot::for_each_pair(file.path(), &mut |space, key, value| {
            batch_bytes += key.len() + value.len();
            batch.put(space, key, value);
            if batch_bytes >= INSTALL_BATCH_BYTES {
                self.kv
                    .write(std::mem::take(&mut batch), false)
                    .map_err(io_error)?;
                batch_bytes = 0;
            }
            Ok(())
        })?;
        batch.put(
            Space::RaftMeta,
            APPLIED_KEY.to_vec(),
            serde_json::to_vec(&meta.last_log_id).map_err(io_error)?,
        );
        batch.put(
            Space::RaftMeta,
            MEMBERSHIP_KEY.to_vec(),
            serde_json::to_vec(&meta.last_membership).map_err(io_error)?,
        );
        batch.delete(Space::RaftMeta, INSTALLING_KEY.to_vec());
        self.kv.write(batch, true).map_err(io_error)?;
        store.protect(None);
        self.note_membership(&meta.last_membership);
        Ok(())
    }

    /// Finishes an install a crash interrupted (see [`StateMachine::install_locked`]); the
    /// snapshot file it names must still be there, or the member cannot start.
    fn finish_interrupted_install(&self) -> io::Result<()> {
        let Some(name) = self
            .kv
            .get(Space::RaftMeta, INSTALLING_KEY)
            .map_err(io_error)?
        else {
            return Ok(());
        };
        let name = String::from_utf8(name).map_err(io_error)?;
        let file = self.snapshot_store()?.named(&name)?;
        let (meta, _) = snapshot::verify(file.path()).map_err(|e| {
            io_error(format!(
                "an interrupted snapshot install cannot be finished: {}: {e}",
                file.path().display()
            ))
        })?;
        tracing::warn!(last = ?meta.last_log_id, "finishing a snapshot install a restart interrupted");
        let _guard = self
            .apply_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.install_locked(&meta, &file)?;
        self.set_current(&meta, &file);
        Ok(())
    }

    /// The current snapshot: the one built or installed last, or after a restart the newest
    /// file on disk (when it is not ahead of the applied state).
    fn current_snapshot(&self) -> io::Result<Option<CurrentSnapshot>> {
        if let Some(current) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(Some(current));
        }
        let applied: Option<LogIdOf<TypeConfig>> = self.read_json(APPLIED_KEY)?.flatten();
        match self.snapshot_store()?.latest()? {
            Some((meta, file)) if meta.last_log_id <= applied => {
                self.set_current(&meta, &file);
                Ok(Some((meta, file)))
            }
            _ => Ok(None),
        }
    }
}

fn session_key(lsid: &[u8]) -> Vec<u8> {
    let mut key = SESSION_PREFIX.to_vec();
    key.extend_from_slice(lsid);
    key
}

/// The field of a recorded reply holding the digest of the statements it answers.
const STATEMENTS_FIELD: &str = "$shoalStmts";

/// The session record after `session`'s statement produced `reply`: results of the same
/// transaction number accumulate (one per batch a router sent), a newer number starts afresh.
fn session_record(
    existing: Option<Document>,
    session: &SessionStatement,
    reply: &Document,
    now_millis: i64,
) -> Document {
    let mut results = match existing {
        Some(record) if record.get_i64("txn").ok() == Some(session.txn_number) => {
            record.get_document("results").cloned().unwrap_or_default()
        }
        _ => Document::new(),
    };
    if results.len() < SESSION_RESULTS_MAX || results.contains_key(session.stmt.to_string()) {
        let mut recorded = reply.clone();
        // The statements this reply answers (bit pattern kept; BSON has no unsigned integer).
        recorded.insert(STATEMENTS_FIELD, session.stmts as i64);
        results.insert(session.stmt.to_string(), recorded);
    }
    doc! {"txn": session.txn_number, "results": results, "lastUse": now_millis}
}

/// What a snapshot holds: catalog, documents and session records (the log and the vote are
/// per-member and stay out).
fn snapshot_ranges() -> [KvRange; 3] {
    [
        (Space::Catalog, Vec::new(), vec![0xff; 64]),
        (Space::Docs, Vec::new(), vec![0xff; 64]),
        (
            Space::RaftMeta,
            SESSION_PREFIX.to_vec(),
            SESSION_END.to_vec(),
        ),
    ]
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.snapshot_now())
            .await
            .map_err(io_error)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.finish_interrupted_install())
            .await
            .map_err(io_error)??;
        let applied: Option<LogIdOf<TypeConfig>> = self.read_json(APPLIED_KEY)?.flatten();
        let membership: StoredMembershipOf<TypeConfig> =
            self.read_json(MEMBERSHIP_KEY)?.unwrap_or_default();
        self.note_membership(&membership);
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let delay = self.delay_secs.load(Ordering::Relaxed);
            if delay > 0
                && let EntryPayload::Normal(proposal) = &entry.payload
            {
                // A delayed member applies each write `secondaryDelaySecs` after the primary
                // proposed it: a window to recover from a mistaken drop.
                let due = proposal.now_millis.saturating_add(i64::from(delay) * 1000);
                let wait = due.saturating_sub(bson::DateTime::now().timestamp_millis());
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
                }
            }
            let this = self.clone();
            let applied = tokio::task::spawn_blocking(move || {
                let result = this.apply_entry(&entry);
                (entry, result)
            })
            .await
            .map_err(io_error)?;
            let reply = applied.1?;
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || this.install(&meta, &snapshot))
            .await
            .map_err(io_error)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        let this = self.clone();
        let current = tokio::task::spawn_blocking(move || this.current_snapshot())
            .await
            .map_err(io_error)??;
        Ok(
            current.map(|(meta, file)| SnapshotOf::<TypeConfig, SnapshotFile> {
                meta,
                snapshot: file,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_records_accumulate_per_transaction() {
        let statement = |txn, stmt| SessionStatement {
            lsid: vec![1; 16],
            txn_number: txn,
            stmt,
            stmts: 0,
        };
        let first = session_record(None, &statement(1, 0), &doc! {"n": 1}, 5);
        let second = session_record(Some(first), &statement(1, 5), &doc! {"n": 2}, 6);
        assert_eq!(second.get_document("results").unwrap().len(), 2);
        let third = session_record(Some(second), &statement(2, 0), &doc! {"n": 3}, 7);
        assert_eq!(third.get_document("results").unwrap().len(), 1);
        assert_eq!(third.get_i64("txn").unwrap(), 2);
    }

    #[test]
    fn a_recorded_reply_answers_only_the_same_statements() {
        let kv: Arc<dyn Kv> = Arc::new(shoal_docstore::MemKv::new());
        let engine = replicated_engine(Arc::clone(&kv)).unwrap();
        let machine = StateMachine::replay_only(Arc::new(engine), Arc::clone(&kv), 1);
        let statement = |stmts| SessionStatement {
            lsid: vec![3; 16],
            txn_number: 4,
            stmt: 0,
            stmts,
        };
        let reply = doc! {"n": 1, "writeErrors": [{"index": 1, "code": 13388}]};
        let record = session_record(None, &statement(11), &reply, 5);
        let mut seed = WriteBatch::new();
        seed.put(
            Space::RaftMeta,
            session_key(&[3; 16]),
            bson::to_vec(&record).unwrap(),
        );
        kv.write(seed, true).unwrap();
        // The identical retry gets the recorded reply, without the bookkeeping field.
        let (_, same) = machine.session_lookup(&statement(11)).unwrap();
        assert_eq!(same, Some(reply));
        // A re-send of part of the batch (same first statement) must execute.
        let (_, other) = machine.session_lookup(&statement(12)).unwrap();
        assert_eq!(other, None);
    }

    /// The ids a migration's recipient holds after applying `drains` (each a
    /// `_shoalMigrateMods` reply) in order.
    fn recipient_after(drains: &[Document]) -> std::collections::BTreeSet<i32> {
        let mut held = std::collections::BTreeSet::new();
        for mods in drains {
            assert_eq!(mods.get_f64("ok").ok(), Some(1.0), "{mods}");
            for doc in mods.get_array("docs").unwrap() {
                held.insert(doc.as_document().unwrap().get_i32("_id").unwrap());
            }
            for id in mods.get_array("deletes").unwrap() {
                held.remove(&id.as_i32().unwrap());
            }
        }
        held
    }

    /// A catch-up drain on the donor's primary can run while an entry is being applied: after
    /// the engine executed it, before the apply commits the held-back writes. The documents of
    /// that entry must reach the recipient. When the tracker noted them as the engine made them,
    /// this drain found them not yet in storage and sent them as deleted, no later drain sent
    /// them, and the donor's range deletion then removed the only copy (the restore that lost
    /// one shard's half of an insert batch).
    #[test]
    fn a_drain_during_an_apply_still_sends_the_applied_documents() {
        let kv: Arc<dyn Kv> = Arc::new(shoal_docstore::MemKv::new());
        let engine = Arc::new(replicated_engine(Arc::clone(&kv)).unwrap());
        let machine = StateMachine::replay_only(Arc::clone(&engine), Arc::clone(&kv), 1);
        let created = engine.execute("db", &doc! {"create": "c"});
        assert_eq!(created.get_f64("ok").ok(), Some(1.0), "{created}");
        let started = engine.execute(
            "admin",
            &doc! {"_shoalMigrateStart": "db.c", "key": {"k": 1}, "min": {"k": 0}, "max": {"k": 500}},
        );
        assert_eq!(started.get_f64("ok").ok(), Some(1.0), "{started}");
        let insert = doc! {"insert": "c", "documents": [{"_id": 1, "k": 1}, {"_id": 2, "k": 2}]};
        let proposal = Proposal {
            db: "db".to_owned(),
            command: bson::to_vec(&insert).unwrap(),
            now_millis: 0,
            session: None,
        };
        let mut batch = WriteBatch::new();
        let reply = machine.apply_proposal(1, &proposal, &mut batch).unwrap();
        assert_eq!(reply.get_i32("n").ok(), Some(2), "{reply}");
        let during = engine.execute("admin", &doc! {"_shoalMigrateMods": "db.c"});
        machine.commit_applied(batch).unwrap();
        let after = engine.execute("admin", &doc! {"_shoalMigrateMods": "db.c"});
        assert_eq!(
            recipient_after(&[during.clone(), after.clone()]),
            [1, 2].into_iter().collect(),
            "drained during the apply: {during}; after it: {after}"
        );
    }

    #[test]
    fn expired_session_records_are_swept() {
        let kv: Arc<dyn Kv> = Arc::new(shoal_docstore::MemKv::new());
        let engine = replicated_engine(Arc::clone(&kv)).unwrap();
        let machine = StateMachine::replay_only(Arc::new(engine), Arc::clone(&kv), 1);
        let now = 10 * SESSION_TIMEOUT_MILLIS;
        let mut seed = WriteBatch::new();
        for (lsid, last_use) in [(1u8, now - SESSION_TIMEOUT_MILLIS - 1), (2u8, now - 1000)] {
            let record = doc! {"txn": 1_i64, "results": {}, "lastUse": last_use};
            seed.put(
                Space::RaftMeta,
                session_key(&[lsid; 16]),
                bson::to_vec(&record).unwrap(),
            );
        }
        kv.write(seed, true).unwrap();
        let mut batch = WriteBatch::new();
        machine.sweep_sessions(now, &mut batch).unwrap();
        assert_eq!(
            batch.ops,
            vec![WriteOp::Delete {
                space: Space::RaftMeta,
                key: session_key(&[1; 16]),
            }]
        );
    }

    /// A member with its snapshot directory, over in-memory storage.
    struct Member {
        kv: Arc<dyn Kv>,
        engine: Arc<Engine>,
        machine: StateMachine,
        _dir: tempfile::TempDir,
    }

    fn member() -> Member {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn Kv> = Arc::new(shoal_docstore::MemKv::new());
        let engine = Arc::new(replicated_engine(Arc::clone(&kv)).unwrap());
        let snapshots = Arc::new(SnapshotStore::open(dir.path()).unwrap());
        let machine = StateMachine::new(Arc::clone(&engine), Arc::clone(&kv), 1, snapshots);
        Member {
            kv,
            engine,
            machine,
            _dir: dir,
        }
    }

    fn insert_entry(index: u64, first_id: i32, count: i32) -> openraft::alias::EntryOf<TypeConfig> {
        let documents: Vec<Document> = (first_id..first_id + count)
            .map(|id| doc! {"_id": id, "pad": "x".repeat(100)})
            .collect();
        let insert = doc! {"insert": "c", "documents": documents};
        openraft::alias::EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new_term_index(1, index),
            payload: EntryPayload::Normal(Proposal {
                db: "db".to_owned(),
                command: bson::to_vec(&insert).unwrap(),
                now_millis: 1,
                session: None,
            }),
        }
    }

    fn count(engine: &Engine) -> i32 {
        let reply = engine.execute("db", &doc! {"count": "c"});
        reply.get_i32("n").unwrap_or(-1)
    }

    #[test]
    fn a_snapshot_file_installs_the_same_state_on_another_member() {
        let primary = member();
        for index in 1..=5 {
            let first = (index as i32 - 1) * 1000;
            primary
                .machine
                .apply_entry(&insert_entry(index, first, 1000))
                .unwrap();
        }
        let built = primary.machine.snapshot_now().unwrap();
        assert_eq!(built.meta.last_log_id.map(|id| id.index), Some(5));
        // More writes after the snapshot are not in it.
        primary
            .machine
            .apply_entry(&insert_entry(6, 5000, 10))
            .unwrap();

        let follower = member();
        follower
            .machine
            .install(&built.meta, &built.snapshot)
            .unwrap();
        assert_eq!(count(&follower.engine), 5000);
        let applied: Option<LogIdOf<TypeConfig>> =
            follower.machine.read_json(APPLIED_KEY).unwrap().flatten();
        assert_eq!(applied, built.meta.last_log_id);
        assert!(!follower.machine.is_installing());
        // The follower serves the installed snapshot in turn.
        let current = follower.machine.current_snapshot().unwrap().unwrap();
        assert_eq!(current.0, built.meta);
        assert!(
            follower
                .kv
                .get(Space::RaftMeta, INSTALLING_KEY)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_damaged_snapshot_file_changes_nothing() {
        let primary = member();
        primary
            .machine
            .apply_entry(&insert_entry(1, 0, 100))
            .unwrap();
        let built = primary.machine.snapshot_now().unwrap();
        let mut bytes = std::fs::read(built.snapshot.path()).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(built.snapshot.path(), &bytes).unwrap();
        let follower = member();
        follower
            .machine
            .apply_entry(&insert_entry(1, 0, 7))
            .unwrap();
        assert!(
            follower
                .machine
                .install(&built.meta, &built.snapshot)
                .is_err()
        );
        assert_eq!(count(&follower.engine), 7);
    }

    /// A crash in the middle of an install leaves the marker and a half-replaced state; the
    /// next start redoes the install from the file before reporting any applied position.
    #[tokio::test]
    async fn an_interrupted_install_is_finished_at_start() {
        let primary = member();
        primary
            .machine
            .apply_entry(&insert_entry(1, 0, 300))
            .unwrap();
        let built = primary.machine.snapshot_now().unwrap();

        let follower = member();
        follower
            .machine
            .apply_entry(&insert_entry(1, 0, 20))
            .unwrap();
        let store = follower.machine.snapshot_store_handle().unwrap();
        let adopted = store.adopt(&built.snapshot, &built.meta).unwrap();
        // What the first batch of an install wrote, and a few pairs of the next ones.
        let mut batch = WriteBatch::new();
        for (space, start, end) in snapshot_ranges() {
            batch.delete_range(space, start, end);
        }
        let name = adopted
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        batch.put(Space::RaftMeta, INSTALLING_KEY.to_vec(), name.into_bytes());
        follower.kv.write(batch, true).unwrap();
        let mut some = WriteBatch::new();
        let mut taken = 0;
        snapshot::for_each_pair(adopted.path(), &mut |space, key, value| {
            if taken < 5 {
                some.put(space, key, value);
                taken += 1;
            }
            Ok(())
        })
        .unwrap();
        follower.kv.write(some, true).unwrap();

        // "Restart": a new state machine over the same storage and directory.
        let mut restarted = StateMachine::new(
            Arc::clone(&follower.engine),
            Arc::clone(&follower.kv),
            1,
            store,
        );
        let (applied, _) = RaftStateMachine::applied_state(&mut restarted)
            .await
            .unwrap();
        assert_eq!(applied, built.meta.last_log_id);
        assert_eq!(count(&follower.engine), 300);
        assert!(
            follower
                .kv
                .get(Space::RaftMeta, INSTALLING_KEY)
                .unwrap()
                .is_none()
        );
    }

    /// Writes made while a snapshot file is being written are not in it (the snapshot is of
    /// one applied position), and do not wait for it.
    #[test]
    fn a_snapshot_is_of_one_applied_position() {
        let primary = member();
        primary
            .machine
            .apply_entry(&insert_entry(1, 0, 50))
            .unwrap();
        let built = primary.machine.snapshot_now().unwrap();
        let (_, pairs_before) = snapshot::verify(built.snapshot.path()).unwrap();
        primary
            .machine
            .apply_entry(&insert_entry(2, 50, 50))
            .unwrap();
        let (_, pairs_after) = snapshot::verify(built.snapshot.path()).unwrap();
        assert_eq!(pairs_before, pairs_after);
        let rebuilt = primary.machine.snapshot_now().unwrap();
        let (_, pairs_now) = snapshot::verify(rebuilt.snapshot.path()).unwrap();
        assert!(
            pairs_now >= pairs_before + 50,
            "{pairs_now} vs {pairs_before}"
        );
        // Only the newest file stays.
        assert!(!built.snapshot.path().exists());
    }
}
