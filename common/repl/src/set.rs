//! [`ReplicaSet`]: one member's Raft instance and the replica-set commands built on it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use bson::{Bson, Document, doc, oid::ObjectId};
use openraft::{
    ChangeMembers, Config, Instant as _, Raft, ServerState, SnapshotPolicy,
    alias::{SnapshotMetaOf, SnapshotOf, VoteOf},
    errors::RaftError,
    metrics::RaftMetrics,
    raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest},
    type_config::async_runtime::WatchReceiver,
};
use shoal_common::{CommandError, ErrorCode};
use shoal_docstore::{Engine, Kv, Space};
use shoal_rpc::RpcClient;

use crate::{
    concern::{W, WriteConcern, session_statement},
    config::ReplConfig,
    log_store::{LogStore, read_incarnation, write_incarnation},
    network::{
        Incarnation, IncarnationCell, IncarnationVerdict, Network, Partition, REFUSAL_CODE,
        REFUSAL_INCARNATION_FIELD, incarnation_verdict,
    },
    snapshot::SnapshotFile,
    state_machine::StateMachine,
    types::{Applied, MemberNode, NodeId, Proposal, TypeConfig, node_id_for},
};

/// Timing and log-retention options of a member.
#[derive(Clone, Debug)]
pub struct ReplOptions {
    /// The shortest election timeout; the longest is twice it. 400 ms gives failover in about
    /// a second on a LAN (MongoDB's default is 10 s).
    pub election_timeout_ms: u64,
    /// Entries between snapshots; older entries are then purged, keeping
    /// [`LOG_KEPT_AFTER_SNAPSHOT`] for lagging members.
    pub snapshot_entries: u64,
}

impl Default for ReplOptions {
    fn default() -> ReplOptions {
        ReplOptions {
            election_timeout_ms: 400,
            snapshot_entries: 20_000,
        }
    }
}

/// Entries kept after a snapshot so a briefly lagging member catches up from the log (at most
/// half the snapshot interval).
pub const LOG_KEPT_AFTER_SNAPSHOT: u64 = 2_000;
/// Entries one append message carries at most; a write command can be up to 48 MB, and one
/// message must fit a 64 MB RPC frame once encoded.
pub const APPEND_ENTRIES_MAX: u64 = 16;
/// How often the primary checks whether a caught-up member of higher priority should take over.
pub const PRIORITY_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long `replSetStepDown` waits for a secondary to catch up (MongoDB's
/// `secondaryCatchUpPeriodSecs` default).
pub const STEP_DOWN_CATCH_UP: Duration = Duration::from_secs(10);
/// How long `replSetInitiate` waits for the first election.
pub const INITIATE_ELECTION_WAIT: Duration = Duration::from_secs(10);
/// How long a member added with `replSetReconfig` may take to catch up before it votes.
pub const ADD_MEMBER_CATCH_UP: Duration = Duration::from_secs(120);
/// How long `replSetGetStatus` on a member without a primary waits for each other member's
/// `hello` before reporting it down.
pub const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Refused messages from another incarnation are logged at most this often (a left-out member
/// sends several per election timeout).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// MongoDB member states as `replSetGetStatus` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// 1.
    Primary,
    /// 2.
    Secondary,
    /// 0: not yet part of an initiated set.
    Startup,
    /// 3: catching up or between roles (a candidate).
    Recovering,
    /// 8: unreachable.
    Down,
    /// 10: no longer in the configuration.
    Removed,
}

impl MemberState {
    fn code(self) -> i32 {
        match self {
            MemberState::Primary => 1,
            MemberState::Secondary => 2,
            MemberState::Startup => 0,
            MemberState::Recovering => 3,
            MemberState::Down => 8,
            MemberState::Removed => 10,
        }
    }

    fn name(self) -> &'static str {
        match self {
            MemberState::Primary => "PRIMARY",
            MemberState::Secondary => "SECONDARY",
            MemberState::Startup => "STARTUP",
            MemberState::Recovering => "RECOVERING",
            MemberState::Down => "DOWN",
            MemberState::Removed => "REMOVED",
        }
    }
}

/// One member's replication.
pub struct ReplicaSet {
    /// The Raft instance; a forced reconfiguration replaces it (see `force.rs`), so callers
    /// take a handle with [`ReplicaSet::raft`] and never hold the lock.
    raft: std::sync::RwLock<Raft<TypeConfig, StateMachine>>,
    /// openraft's settings, kept to start a replacement instance.
    pub(crate) raft_config: Arc<Config>,
    pub(crate) me: NodeId,
    pub(crate) host: String,
    pub(crate) set_name: String,
    options: ReplOptions,
    partition: Arc<Partition>,
    pub(crate) kv: Arc<dyn Kv>,
    pub(crate) rpc: RpcClient,
    /// The state machine of the current Raft instance (replaced with it).
    pub(crate) state_machine: std::sync::RwLock<StateMachine>,
    /// This member's incarnation of the set, shared with the transport.
    pub(crate) incarnation: Arc<IncarnationCell>,
    /// Held while a forced reconfiguration runs: one at a time.
    pub(crate) force_lock: tokio::sync::Mutex<()>,
    /// When a message from another incarnation was last logged (refusals are rate-limited:
    /// a left-out member keeps sending).
    refusal_logged: std::sync::Mutex<Option<Instant>>,
    /// Set while this leader cannot get a majority to confirm it (see `check_majority`).
    pub(crate) majority_lost: std::sync::atomic::AtomicBool,
    /// The configuration version (membership log index + 1) that removed this member, 0 when it
    /// is in the set; a newer configuration that includes it again (re-added) clears it.
    pub(crate) removed_at: std::sync::atomic::AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("host", &self.host)
            .field("set", &self.set_name)
            .finish_non_exhaustive()
    }
}

fn not_primary() -> CommandError {
    CommandError::new(ErrorCode::NOT_WRITABLE_PRIMARY, "not primary")
        .with_label("RetryableWriteError")
}

/// A Raft API error as the MongoDB error a client sees: losing the primary role mid-operation is
/// InterruptedDueToReplStateChange (retryable), a stopped Raft is InterruptedAtShutdown.
fn raft_write_error<E>(error: RaftError<TypeConfig, E>) -> CommandError
where
    E: std::error::Error + openraft::TryAsRef<openraft::errors::ForwardToLeader<TypeConfig>>,
{
    if error.forward_to_leader().is_some() {
        return CommandError::new(
            ErrorCode::INTERRUPTED_DUE_TO_REPL_STATE_CHANGE,
            format!("operation was interrupted because the member stepped down: {error}"),
        )
        .with_label("RetryableWriteError");
    }
    match error {
        RaftError::APIError(api) => CommandError::new(ErrorCode::OPERATION_FAILED, api.to_string()),
        RaftError::Fatal(fatal) => CommandError::new(
            ErrorCode::INTERRUPTED_AT_SHUTDOWN,
            format!("replication stopped: {fatal}"),
        )
        .with_label("RetryableWriteError"),
    }
}

fn election_id(term: u64) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    bytes[4..].copy_from_slice(&term.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

fn op_time(term: u64, index: u64) -> Document {
    let seconds = u32::try_from(index >> 32).unwrap_or(u32::MAX);
    let increment = u32::try_from(index & 0xffff_ffff).unwrap_or(u32::MAX);
    doc! {
        "ts": Bson::Timestamp(bson::Timestamp { time: seconds, increment }),
        "t": i64::try_from(term).unwrap_or(i64::MAX),
    }
}

/// Starts a Raft instance for member `me` over its storage `kv`.
pub(crate) async fn start_raft(
    me: NodeId,
    config: &Arc<Config>,
    network: Network,
    kv: Arc<dyn Kv>,
    state_machine: StateMachine,
) -> Result<Raft<TypeConfig, StateMachine>, String> {
    Raft::new(
        me,
        Arc::clone(config),
        network,
        LogStore::new(kv),
        state_machine,
    )
    .await
    .map_err(|e| format!("starting raft: {e}"))
}

impl ReplicaSet {
    /// Opens replication for the member at `host` over its storage `kv` (the same storage the
    /// engine writes through a [`crate::DeferringKv`]), with its Raft snapshots in
    /// `snapshot_dir`.
    pub async fn open(
        engine: Arc<Engine>,
        kv: Arc<dyn Kv>,
        snapshot_dir: &std::path::Path,
        host: &str,
        set_name: &str,
        rpc: RpcClient,
        options: ReplOptions,
    ) -> Result<Arc<ReplicaSet>, String> {
        let me = node_id_for(host);
        let config = Config {
            cluster_name: set_name.to_owned(),
            heartbeat_interval: (options.election_timeout_ms / 4).max(20),
            election_timeout_min: options.election_timeout_ms,
            election_timeout_max: options.election_timeout_ms * 2,
            enable_pre_vote: Some(true),
            max_payload_entries: APPEND_ENTRIES_MAX,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_entries),
            max_in_snapshot_log_to_keep: LOG_KEPT_AFTER_SNAPSHOT.min(options.snapshot_entries / 2),
            install_snapshot_timeout: 60_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft configuration: {e}"))?;
        let raft_config = Arc::new(config);
        let partition = Arc::new(Partition::default());
        let stored =
            read_incarnation(kv.as_ref()).map_err(|e| format!("reading raft_meta: {e}"))?;
        let incarnation = Arc::new(IncarnationCell::new(stored));
        let network = Network::new(
            rpc.clone(),
            me,
            set_name.to_owned(),
            Arc::clone(&partition),
            Arc::clone(&incarnation),
        );
        let snapshots = crate::snapshot::SnapshotStore::open(snapshot_dir).map_err(|e| {
            format!(
                "opening the snapshot directory {}: {e}",
                snapshot_dir.display()
            )
        })?;
        let state_machine = StateMachine::new(engine, Arc::clone(&kv), me, Arc::new(snapshots));
        let raft = start_raft(
            me,
            &raft_config,
            network,
            Arc::clone(&kv),
            state_machine.clone(),
        )
        .await?;
        let set = Arc::new(ReplicaSet {
            raft: std::sync::RwLock::new(raft),
            raft_config,
            me,
            host: host.to_owned(),
            set_name: set_name.to_owned(),
            options,
            partition,
            kv,
            rpc,
            state_machine: std::sync::RwLock::new(state_machine),
            incarnation,
            force_lock: tokio::sync::Mutex::new(()),
            refusal_logged: std::sync::Mutex::new(None),
            removed_at: std::sync::atomic::AtomicU64::new(0),
            majority_lost: std::sync::atomic::AtomicBool::new(false),
            started: Instant::now(),
        });
        set.apply_electability();
        tokio::spawn(priority_supervisor(Arc::downgrade(&set)));
        Ok(set)
    }

    /// The replica-set name.
    pub fn set_name(&self) -> &str {
        &self.set_name
    }

    /// A handle on the current Raft instance (cheap: it is reference-counted).
    pub(crate) fn raft(&self) -> Raft<TypeConfig, StateMachine> {
        self.raft
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Installs a new Raft instance and its state machine (a forced reconfiguration).
    pub(crate) fn replace_raft(&self, raft: Raft<TypeConfig, StateMachine>, sm: StateMachine) {
        *self
            .raft
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = raft;
        *self
            .state_machine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = sm;
    }

    /// Whether a snapshot install is replacing this member's data (read without cloning the
    /// state machine: every request asks).
    fn is_installing(&self) -> bool {
        self.state_machine
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_installing()
    }

    /// The current Raft instance's state machine.
    pub(crate) fn state_machine(&self) -> StateMachine {
        self.state_machine
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A Raft network sending as this member.
    pub(crate) fn network(&self) -> Network {
        Network::new(
            self.rpc.clone(),
            self.me,
            self.set_name.clone(),
            Arc::clone(&self.partition),
            Arc::clone(&self.incarnation),
        )
    }

    fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft().metrics().borrow_watched().clone()
    }

    /// Whether this member is the primary now.
    pub fn is_primary(&self) -> bool {
        self.is_raft_leader()
            && !self
                .majority_lost
                .load(std::sync::atomic::Ordering::Relaxed)
            && !self.incarnation.is_superseded()
            // Raft takes a snapshot's position before the install has written it: a member
            // elected meanwhile must not serve (or start primary work on) half-replaced data.
            && !self.is_installing()
    }

    /// Whether Raft considers this member the leader (it may have lost its majority since).
    fn is_raft_leader(&self) -> bool {
        // Borrowed, not cloned: this runs on every write and every read.
        let watch = self.raft().metrics();
        let metrics = watch.borrow_watched();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.me)
    }

    /// How long a primary may go without a majority confirming it before it stops acting as
    /// primary: by then the others have had time to elect someone else.
    fn majority_lease(&self) -> Duration {
        Duration::from_millis((self.options.election_timeout_ms * 4).max(2_000))
    }

    /// Confirms with a majority (one heartbeat round) that this leader still leads, and records
    /// the answer: a primary cut off from its majority steps down in `hello` and refuses writes,
    /// as MongoDB's does, instead of waiting to hear of a higher term.
    async fn check_majority(&self) {
        let confirmed = if self.is_raft_leader() {
            let raft = self.raft();
            let probe = raft.get_read_log_id(openraft::raft::ReadPolicy::ReadIndex);
            matches!(
                tokio::time::timeout(self.majority_lease(), probe).await,
                Ok(Ok(_))
            )
        } else {
            true
        };
        let was_lost = self
            .majority_lost
            .swap(!confirmed, std::sync::atomic::Ordering::Relaxed);
        if was_lost == confirmed {
            if confirmed {
                tracing::info!(set = %self.set_name, "a majority confirms this primary again");
            } else {
                tracing::warn!(set = %self.set_name, "no majority confirms this primary: stepping down from serving writes");
            }
        }
    }

    /// Whether this member may serve reads that accept a secondary.
    pub fn can_serve_reads(&self) -> bool {
        let metrics = self.metrics();
        // A snapshot install replaces the data in several batches: nothing may read it halfway.
        !self.is_installing()
            && !self.is_removed()
            && metrics
                .membership_config
                .membership()
                .get_node(&self.me)
                .is_some()
            && matches!(
                metrics.state,
                ServerState::Leader | ServerState::Follower | ServerState::Learner
            )
    }

    fn is_removed(&self) -> bool {
        if self.incarnation.is_superseded() {
            return true;
        }
        let removed_at = self.removed_at.load(std::sync::atomic::Ordering::Relaxed);
        if removed_at == 0 {
            return false;
        }
        let metrics = self.metrics();
        let current = Self::config_version(&metrics).unsigned_abs();
        let included = metrics
            .membership_config
            .membership()
            .get_node(&self.me)
            .is_some();
        !(included && current > removed_at)
    }

    /// Whether the set has been initiated (this member holds a configuration).
    pub fn is_initiated(&self) -> bool {
        self.metrics()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some()
    }

    /// The current configuration, as this member's Raft membership holds it.
    pub(crate) fn config(&self) -> ReplConfig {
        let metrics = self.metrics();
        let members = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        ReplConfig {
            set_name: self.set_name.clone(),
            members,
        }
    }

    fn config_version(metrics: &RaftMetrics<TypeConfig>) -> i64 {
        metrics
            .membership_config
            .log_id()
            .map_or(1, |id| i64::try_from(id.index + 1).unwrap_or(i64::MAX))
    }

    /// Disables elections on a member that must never become primary (priority 0, hidden,
    /// delayed, or no longer in the set); openraft has no priorities of its own.
    pub(crate) fn apply_electability(&self) {
        let metrics = self.metrics();
        let electable = !self.is_removed()
            && metrics
                .membership_config
                .membership()
                .get_node(&self.me)
                .is_none_or(MemberNode::electable);
        self.raft().runtime_config().elect(electable);
    }

    /// Handles one Raft message from a peer (`_shoalRaft`).
    pub async fn handle_raft(&self, request: &Document) -> Document {
        match self.handle_raft_inner(request).await {
            Ok(reply) => reply,
            Err(error) => error.to_document(),
        }
    }

    async fn handle_raft_inner(&self, request: &Document) -> Result<Document, CommandError> {
        let kind = request.get_str("_shoalRaft").unwrap_or("");
        let from = request.get_i64("from").map(|id| id as u64).unwrap_or(0);
        if self.partition.blocks(from) {
            return Err(CommandError::new(
                ErrorCode::HOST_UNREACHABLE,
                "partitioned (fault injection)",
            ));
        }
        if request.get_str("setName").ok() != Some(self.set_name.as_str()) {
            return Err(CommandError::bad_value(
                "raft message for another replica set",
            ));
        }
        self.check_incarnation(from, request)?;
        let body = request
            .get_str("body")
            .map_err(|_| CommandError::bad_value("raft message without body"))?;
        let parse_error =
            |e: serde_json::Error| CommandError::bad_value(format!("raft message: {e}"));
        let fatal = |e: String| CommandError::new(ErrorCode::SHUTDOWN_IN_PROGRESS, e);
        let reply_body = match kind {
            "append" => {
                let rpc: AppendEntriesRequest<TypeConfig> =
                    serde_json::from_str(body).map_err(parse_error)?;
                let response = self
                    .raft()
                    .append_entries(rpc)
                    .await
                    .map_err(|e| fatal(e.to_string()))?;
                serde_json::to_string(&response)
            }
            "vote" | "preVote" => {
                let rpc: VoteRequest<TypeConfig> =
                    serde_json::from_str(body).map_err(parse_error)?;
                let response = if kind == "vote" {
                    self.raft().vote(rpc).await
                } else {
                    self.raft().pre_vote(rpc).await
                }
                .map_err(|e| fatal(e.to_string()))?;
                serde_json::to_string(&response)
            }
            "transferLeader" => {
                let rpc: TransferLeaderRequest<TypeConfig> =
                    serde_json::from_str(body).map_err(parse_error)?;
                let response = self
                    .raft()
                    .handle_transfer_leader(rpc)
                    .await
                    .map_err(|e| fatal(e.to_string()))?;
                serde_json::to_string(&response)
            }
            "snapshotChunk" => {
                let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
                    serde_json::from_str(body).map_err(parse_error)?;
                let chunk = SnapshotChunk::from_request(request)?;
                Ok(self.receive_snapshot_chunk(from, vote, meta, chunk).await?)
            }
            "removed" => {
                // The primary tells a member it reconfigured away that it is out.
                let version: u64 = serde_json::from_str(body).unwrap_or(u64::MAX);
                self.removed_at
                    .store(version.max(1), std::sync::atomic::Ordering::Relaxed);
                self.apply_electability();
                tracing::warn!(set = %self.set_name, "removed from the replica set");
                Ok("null".to_owned())
            }
            other => {
                return Err(CommandError::bad_value(format!(
                    "unknown raft message '{other}'"
                )));
            }
        }
        .map_err(|e| CommandError::internal(format!("encoding raft reply: {e}")))?;
        Ok(doc! {"ok": 1.0, "body": reply_body})
    }

    /// Writes one chunk of a snapshot `from` streams to this member; after the last one,
    /// hands the file to Raft, which installs it if the sender still leads, and answers with
    /// the install's response. An error makes the sender start over later.
    async fn receive_snapshot_chunk(
        &self,
        from: NodeId,
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
        chunk: SnapshotChunk,
    ) -> Result<String, CommandError> {
        let refused = |error: String| {
            CommandError::new(
                ErrorCode::OPERATION_FAILED,
                format!("snapshot from member {from}: {error}"),
            )
        };
        let store = self
            .state_machine()
            .snapshot_store_handle()
            .map_err(|e| refused(e.to_string()))?;
        let receiving = Arc::clone(&store);
        let expected = meta.clone();
        let received = tokio::task::spawn_blocking(move || {
            let file = receiving.receive_chunk(
                from,
                chunk.stream,
                chunk.offset,
                chunk.total,
                &chunk.data,
            )?;
            // A damaged file must not reach Raft: a failed install stops its state machine.
            // Refused here, the sender sends the snapshot again.
            if let Some(file) = &file
                && let Err(error) = crate::snapshot::check_received(file, &expected)
            {
                receiving.discard_received(file);
                return Err(error);
            }
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| refused(e.to_string()))?
        .map_err(|e| refused(e.to_string()))?;
        let Some(file) = received else {
            return Ok("null".to_owned());
        };
        let snapshot = SnapshotOf::<TypeConfig, SnapshotFile> {
            meta,
            snapshot: file.clone(),
        };
        let installed = self.raft().install_full_snapshot(vote, snapshot).await;
        store.discard_received(&file);
        let response = installed.map_err(|e| refused(e.to_string()))?;
        serde_json::to_string(&response).map_err(|e| refused(e.to_string()))
    }

    /// Accepts a Raft message only from a member of this member's incarnation of the set
    /// (adopting the sender's while this member is pristine); see [`incarnation_verdict`].
    fn check_incarnation(&self, from: NodeId, request: &Document) -> Result<(), CommandError> {
        let theirs = request
            .get_document("incarnation")
            .ok()
            .and_then(Incarnation::from_document);
        let mine = self.incarnation.get();
        match incarnation_verdict(mine, theirs, !self.is_initiated()) {
            IncarnationVerdict::Accept => Ok(()),
            IncarnationVerdict::Adopt(adopted) => self.adopt_incarnation(adopted),
            IncarnationVerdict::Refuse { superseded } => {
                if superseded && self.incarnation.mark_superseded() {
                    self.apply_electability();
                    tracing::warn!(set = %self.set_name, theirs = ?theirs.map(|i| i.to_string()), "a member of a newer incarnation of the set wrote to this one: a forced reconfiguration left this member out; wipe its data directory and add it again with rs.add");
                }
                self.log_refusal(from, mine, theirs);
                Err(self.refusal(mine))
            }
        }
    }

    fn adopt_incarnation(&self, adopted: Incarnation) -> Result<(), CommandError> {
        let persist = |incarnation| write_incarnation(self.kv.as_ref(), Some(incarnation));
        match self.incarnation.adopt(adopted, persist) {
            Ok(true) => {
                tracing::info!(set = %self.set_name, incarnation = %adopted, "joined the replica set's incarnation");
                Ok(())
            }
            Ok(false) => Err(self.refusal(self.incarnation.get())),
            Err(error) => Err(CommandError::internal(format!(
                "storing the replica set's incarnation: {error}"
            ))),
        }
    }

    /// The error a member of another incarnation gets: it carries this member's incarnation
    /// so that an older member learns it was left out.
    fn refusal(&self, mine: Option<Incarnation>) -> CommandError {
        let mut error = CommandError::new(
            REFUSAL_CODE,
            format!(
                "raft message from another incarnation of replica set {}: the sender was left out by a forced reconfiguration (or this member was); wipe the left-out member's data directory and add it again with rs.add",
                self.set_name
            ),
        );
        if let Some(mine) = mine {
            error
                .extra
                .insert(REFUSAL_INCARNATION_FIELD, mine.to_document());
        }
        error
    }

    fn log_refusal(&self, from: NodeId, mine: Option<Incarnation>, theirs: Option<Incarnation>) {
        let mut logged = self
            .refusal_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if logged.is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *logged = Some(Instant::now());
        tracing::warn!(
            set = %self.set_name,
            from,
            mine = ?mine.map(|i| i.to_string()),
            theirs = ?theirs.map(|i| i.to_string()),
            "refused raft messages from another incarnation of the replica set"
        );
    }

    /// Replicates the write `command` on database `db` and waits for its write concern; returns
    /// the command's reply (with `writeConcernError` when the concern was not met in time).
    pub async fn write(&self, db: &str, command: Document) -> Document {
        match self.write_inner(db, command).await {
            Ok(reply) => reply,
            Err(error) => error.to_document(),
        }
    }

    async fn write_inner(&self, db: &str, command: Document) -> Result<Document, CommandError> {
        let concern = WriteConcern::of(&command)?;
        if !self.is_primary() {
            return Err(not_primary());
        }
        if let W::Members(n) = concern.w {
            let data_bearing = self.config().members.len();
            if n as usize > data_bearing {
                return Err(CommandError::new(
                    ErrorCode::UNSATISFIABLE_WRITE_CONCERN,
                    format!("Not enough data-bearing nodes: w: {n} with {data_bearing} members"),
                ));
            }
        }
        let proposal = Proposal {
            db: db.to_owned(),
            command: bson::to_vec(&command)
                .map_err(|e| CommandError::internal(format!("encoding the command: {e}")))?,
            now_millis: bson::DateTime::now().timestamp_millis(),
            session: session_statement(&command),
        };
        if concern.w == W::Unacknowledged {
            let raft = self.raft();
            tokio::spawn(async move {
                if let Err(error) = raft.client_write(proposal).await {
                    tracing::debug!(%error, "unacknowledged write failed");
                }
            });
            return Ok(doc! {"ok": 1.0});
        }
        let started = tokio::time::Instant::now();
        let deadline = concern.deadline();
        let response = match tokio::time::timeout(deadline, self.raft().client_write(proposal))
            .await
        {
            Ok(result) => result.map_err(raft_write_error)?,
            Err(_) => {
                // The entry stays in the log and commits when a majority is back; only the
                // acknowledgement is given up, as MongoDB does.
                return Ok(doc! {"ok": 1.0, "n": 0, "writeConcernError": concern.timeout_error()});
            }
        };
        let mut reply = Applied::document(&response.data);
        if let W::Members(n) = concern.w
            && n > 1
        {
            let index = response.log_id.index;
            let remaining = deadline.saturating_sub(started.elapsed());
            if !self.wait_replicated(index, n as usize, remaining).await {
                reply.insert("writeConcernError", concern.timeout_error());
            }
        }
        Ok(reply)
    }

    /// Waits until `count` members (this one included) hold the log up to `index`.
    async fn wait_replicated(&self, index: u64, count: usize, limit: Duration) -> bool {
        let mut watch = self.raft().metrics();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let reached = {
                let metrics = watch.borrow_watched();
                let others = metrics.replication.as_ref().map_or(0, |replication| {
                    replication
                        .iter()
                        .filter(|(id, matched)| {
                            **id != self.me && matched.is_some_and(|m| m.index >= index)
                        })
                        .count()
                });
                others + 1 >= count
            };
            if reached {
                return true;
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// `readConcern: {level: "linearizable"}`: confirms with a majority that this member is
    /// still the primary and has applied everything committed before the read.
    pub async fn ensure_linearizable(&self) -> Result<(), CommandError> {
        if !self.is_primary() {
            return Err(CommandError::new(
                ErrorCode::NOT_WRITABLE_PRIMARY,
                "linearizable read concern requires the primary",
            ));
        }
        let raft = self.raft();
        let read = raft.ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(raft_write_error(error)),
            Err(_) => Err(CommandError::new(
                ErrorCode::EXCEEDED_TIME_LIMIT,
                "could not confirm the primary with a majority in time",
            )),
        }
    }

    /// `replSetInitiate`.
    pub async fn initiate(&self, config: Option<&Document>) -> Result<Document, CommandError> {
        if self.is_initiated() {
            return Err(CommandError::new(
                ErrorCode::ALREADY_INITIALIZED,
                "already initialized",
            ));
        }
        let parsed = match config {
            Some(config) => ReplConfig::parse(config, &self.set_name)?,
            None => ReplConfig::parse(
                &doc! {"_id": self.set_name.clone(), "members": [{"_id": 0, "host": self.host.clone()}]},
                &self.set_name,
            )?,
        };
        if !parsed.members.contains_key(&self.me) {
            return Err(CommandError::new(
                ErrorCode::INVALID_REPLICA_SET_CONFIG,
                format!(
                    "No host described in new configuration with {{version: 1, term: 0}} for replica set {} maps to this node ({})",
                    self.set_name, self.host
                ),
            ));
        }
        let voters: BTreeMap<NodeId, MemberNode> = parsed
            .members
            .iter()
            .filter(|(_, m)| m.votes > 0)
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let incarnation = self.start_first_incarnation()?;
        if let Err(error) = self.raft().initialize(voters).await {
            self.forget_incarnation(incarnation);
            return Err(CommandError::new(
                ErrorCode::OPERATION_FAILED,
                error.to_string(),
            ));
        }
        let learners: Vec<(NodeId, MemberNode)> = parsed
            .members
            .iter()
            .filter(|(_, m)| m.votes == 0)
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        if !learners.is_empty() {
            self.wait_for_leader(INITIATE_ELECTION_WAIT).await?;
            for (id, node) in learners {
                self.add_learner_as_primary(id, node).await?;
            }
        }
        self.apply_electability();
        tracing::info!(set = %self.set_name, members = parsed.members.len(), "replica set initiated");
        Ok(doc! {"ok": 1.0})
    }

    /// Gives the set `replSetInitiate` makes its first incarnation (persisted before any
    /// message carries it); the other members adopt it from the first message they receive.
    fn start_first_incarnation(&self) -> Result<Incarnation, CommandError> {
        let first = Incarnation::first();
        let persist = |incarnation| write_incarnation(self.kv.as_ref(), Some(incarnation));
        match self.incarnation.adopt(first, persist) {
            Ok(true) => Ok(first),
            Ok(false) => Err(CommandError::new(
                ErrorCode::ALREADY_INITIALIZED,
                "this member already joined a replica set another member initiated",
            )),
            Err(error) => Err(CommandError::internal(format!(
                "storing the replica set's incarnation: {error}"
            ))),
        }
    }

    /// Undoes [`ReplicaSet::start_first_incarnation`] after a failed initiation.
    fn forget_incarnation(&self, incarnation: Incarnation) {
        match write_incarnation(self.kv.as_ref(), None) {
            Ok(()) => self.incarnation.set(None),
            Err(error) => {
                tracing::warn!(%error, %incarnation, "could not clear the incarnation of a failed initiation")
            }
        }
    }

    async fn add_learner_as_primary(
        &self,
        id: NodeId,
        node: MemberNode,
    ) -> Result<(), CommandError> {
        if self.is_primary() {
            self.raft()
                .add_learner(id, node, false)
                .await
                .map_err(raft_write_error)?;
            return Ok(());
        }
        Err(CommandError::new(
            ErrorCode::NOT_WRITABLE_PRIMARY,
            "this member did not win the first election; run replSetReconfig on the primary to add non-voting members",
        ))
    }

    async fn wait_for_leader(&self, limit: Duration) -> Result<NodeId, CommandError> {
        let mut watch = self.raft().metrics();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(leader) = watch.borrow_watched().current_leader {
                return Ok(leader);
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                return Err(CommandError::new(
                    ErrorCode::EXCEEDED_TIME_LIMIT,
                    "no primary was elected in time",
                ));
            }
        }
    }

    /// `replSetReconfig`: adds, removes and changes members. New members first catch up as
    /// learners (from a snapshot and the log), then gain their vote.
    pub async fn reconfig(&self, config: &Document) -> Result<Document, CommandError> {
        if !self.is_primary() {
            return Err(not_primary());
        }
        let new = ReplConfig::parse(config, &self.set_name)?;
        let old = self.config();
        let old_voters = old.voters();
        let new_voters = new.voters();
        // Several votes may change at once (unlike MongoDB's one-at-a-time rule): openraft's
        // joint consensus keeps every intermediate configuration safe.
        let added: Vec<NodeId> = new
            .members
            .keys()
            .filter(|id| !old.members.contains_key(id))
            .copied()
            .collect();
        for id in &added {
            let node = new.members[id].clone();
            let raft = self.raft();
            let add = raft.add_learner(*id, node, true);
            match tokio::time::timeout(ADD_MEMBER_CATCH_UP, add).await {
                Ok(result) => {
                    result.map_err(raft_write_error)?;
                }
                Err(_) => {
                    return Err(CommandError::new(
                        ErrorCode::EXCEEDED_TIME_LIMIT,
                        format!("member {} did not catch up in time", new.members[id].host),
                    ));
                }
            }
        }
        let changed: BTreeMap<NodeId, MemberNode> = new
            .members
            .iter()
            .filter(|(id, node)| old.members.get(id).is_some_and(|old| old != *node))
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        if !changed.is_empty() {
            self.raft()
                .change_membership(ChangeMembers::SetNodes(changed), true)
                .await
                .map_err(raft_write_error)?;
        }
        if old_voters != new_voters {
            self.raft()
                .change_membership(ChangeMembers::ReplaceAllVoters(new_voters), true)
                .await
                .map_err(raft_write_error)?;
        }
        let removed: BTreeSet<NodeId> = old
            .members
            .keys()
            .filter(|id| !new.members.contains_key(id))
            .copied()
            .collect();
        if !removed.is_empty() {
            self.raft()
                .change_membership(ChangeMembers::RemoveNodes(removed.clone()), true)
                .await
                .map_err(raft_write_error)?;
            let version = Self::config_version(&self.metrics()).unsigned_abs();
            for id in &removed {
                if let Some(node) = old.members.get(id) {
                    self.notify_removed(&node.host, version).await;
                }
            }
        }
        self.apply_electability();
        tracing::info!(set = %self.set_name, added = added.len(), removed = removed.len(), "replica set reconfigured");
        Ok(doc! {"ok": 1.0})
    }

    async fn notify_removed(&self, host: &str, version: u64) {
        let mut request = doc! {
            "_shoalRaft": "removed", "from": self.me as i64, "setName": self.set_name.clone(),
            "body": version.to_string(), "$db": "admin",
        };
        if let Some(incarnation) = self.incarnation.get() {
            request.insert("incarnation", incarnation.to_document());
        }
        if let Err(error) = self.rpc.call(host, request, Duration::from_secs(2)).await {
            // It stops receiving the log anyway; it only learns it is out later.
            tracing::info!(host, %error, "could not tell a removed member it is out");
        }
    }

    /// `replSetStepDown`: hands the primary role to the caught-up electable secondary of
    /// highest priority.
    pub async fn step_down(&self) -> Result<Document, CommandError> {
        if !self.is_primary() {
            return Err(CommandError::new(
                ErrorCode::NOT_WRITABLE_PRIMARY,
                "not primary so can't step down",
            ));
        }
        let deadline = tokio::time::Instant::now() + STEP_DOWN_CATCH_UP;
        let target = loop {
            if let Some(target) = self.best_successor(None) {
                break target;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CommandError::new(
                    ErrorCode::EXCEEDED_TIME_LIMIT,
                    "No electable secondaries caught up",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.raft()
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| CommandError::new(ErrorCode::SHUTDOWN_IN_PROGRESS, e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.is_primary() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(set = %self.set_name, "stepped down");
        Ok(doc! {"ok": 1.0})
    }

    /// The caught-up electable member (other than this one) of highest priority, optionally
    /// only those of priority above `above`.
    fn best_successor(&self, above: Option<u32>) -> Option<NodeId> {
        let metrics = self.metrics();
        let last = metrics.last_log_index?;
        let replication = metrics.replication.as_ref()?;
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .filter(|(id, node)| {
                **id != self.me
                    && voters.contains(id)
                    && node.electable()
                    && above.is_none_or(|p| node.priority_milli > p)
                    && replication
                        .get(id)
                        .is_some_and(|m| m.is_some_and(|m| m.index >= last))
            })
            .max_by_key(|(_, node)| node.priority_milli)
            .map(|(id, _)| *id)
    }

    /// Blocks Raft messages to and from the members at `hosts` (empty heals).
    pub fn set_partition(&self, hosts: &[String]) {
        let peers = hosts.iter().map(|h| node_id_for(h)).collect();
        self.partition.set(peers);
        tracing::warn!(blocked = ?hosts, "fault injection: raft partition set");
    }

    /// The `hello` fields of a replica-set member.
    pub fn hello_fields(&self, reply: &mut Document) {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let primary = self.is_primary();
        let in_set = membership.get_node(&self.me).is_some() && !self.is_removed();
        let mut hosts = Vec::new();
        let mut passives = Vec::new();
        for (_, node) in membership.nodes() {
            if node.hidden {
                continue;
            }
            if node.priority_milli > 0 {
                hosts.push(Bson::String(node.host.clone()));
            } else {
                passives.push(Bson::String(node.host.clone()));
            }
        }
        reply.insert("isWritablePrimary", primary);
        reply.insert(
            "secondary",
            in_set && !primary && metrics.current_leader.is_some(),
        );
        if in_set {
            reply.insert("setName", self.set_name.clone());
            reply.insert("setVersion", Self::config_version(&metrics));
            reply.insert("hosts", hosts);
            if !passives.is_empty() {
                reply.insert("passives", passives);
            }
            if let Some(me) = membership.get_node(&self.me) {
                if me.hidden {
                    reply.insert("hidden", true);
                }
                if me.priority_milli == 0 {
                    reply.insert("passive", true);
                }
                if me.secondary_delay_secs > 0 {
                    reply.insert("secondaryDelaySecs", i64::from(me.secondary_delay_secs));
                }
            }
            // A leader without a majority does not name itself primary.
            if let Some(leader) = metrics.current_leader
                && (leader != self.me || primary)
                && let Some(node) = membership.get_node(&leader)
            {
                reply.insert("primary", node.host.clone());
            }
            if primary {
                reply.insert("electionId", election_id(metrics.current_term));
            }
            let optime = metrics.last_applied.map_or_else(
                || op_time(0, 0),
                |applied| op_time(applied.leader_id.term, applied.index),
            );
            // The proposal time of the last applied write: what `maxStalenessSeconds` compares.
            // A purged entry (or a blank one) falls back to now, which errs on "fresh".
            let written = metrics
                .last_applied
                .and_then(|applied| self.entry_time(applied.index))
                .unwrap_or_else(|| bson::DateTime::now().timestamp_millis());
            reply.insert(
                "lastWrite",
                doc! {
                    "opTime": optime.clone(),
                    "majorityOpTime": optime,
                    "lastWriteDate": bson::DateTime::from_millis(written),
                },
            );
        } else {
            reply.insert("isreplicaset", true);
            reply.insert("setName", self.set_name.clone());
        }
        reply.insert("me", self.host.clone());
    }

    fn member_state(&self, metrics: &RaftMetrics<TypeConfig>) -> MemberState {
        if self.is_removed() {
            return MemberState::Removed;
        }
        if metrics
            .membership_config
            .membership()
            .get_node(&self.me)
            .is_none()
        {
            return MemberState::Startup;
        }
        match metrics.state {
            ServerState::Leader if metrics.current_leader == Some(self.me) && self.is_primary() => {
                MemberState::Primary
            }
            ServerState::Leader if metrics.current_leader == Some(self.me) => {
                MemberState::Secondary
            }
            ServerState::Follower | ServerState::Learner if metrics.current_leader.is_some() => {
                MemberState::Secondary
            }
            _ => MemberState::Recovering,
        }
    }

    /// The time the entry at `index` was proposed (from the log), if still there.
    fn entry_time(&self, index: u64) -> Option<i64> {
        let bytes = self.kv.get(Space::RaftLog, &index.to_be_bytes()).ok()??;
        let entry: openraft::alias::EntryOf<TypeConfig> = serde_json::from_slice(&bytes).ok()?;
        match entry.payload {
            openraft::EntryPayload::Normal(proposal) => Some(proposal.now_millis),
            _ => None,
        }
    }

    /// `replSetGetStatus`. The primary knows every member's progress and last heartbeat; a
    /// secondary asks the primary and falls back to what it knows itself.
    pub async fn status(&self, local_only: bool) -> Result<Document, CommandError> {
        if !self.is_initiated() && !self.is_removed() {
            return Err(CommandError::new(
                ErrorCode::NOT_YET_INITIALIZED,
                "no replset config has been received",
            ));
        }
        let metrics = self.metrics();
        if !local_only
            && !self.is_primary()
            && let Some(leader) = metrics.current_leader
            && leader != self.me
            && let Some(node) = metrics.membership_config.membership().get_node(&leader)
        {
            let request = doc! {"replSetGetStatus": 1, "_shoalLocal": true, "$db": "admin"};
            if let Ok(mut reply) = self
                .rpc
                .call(&node.host, request, Duration::from_secs(2))
                .await
                && reply.get_f64("ok") == Ok(1.0)
            {
                self.rewrite_self(&mut reply, &metrics);
                return Ok(reply);
            }
        }
        // Without a primary to ask (a set that lost its majority), probe the others: the
        // disaster-recovery runbook starts from this view.
        let unreachable = if local_only || self.is_primary() {
            BTreeSet::new()
        } else {
            self.unreachable_members(&metrics).await
        };
        Ok(self.local_status(&metrics, &unreachable))
    }

    /// The members of the configuration (this one aside) that do not answer `hello` within
    /// [`STATUS_PROBE_TIMEOUT`].
    async fn unreachable_members(&self, metrics: &RaftMetrics<TypeConfig>) -> BTreeSet<NodeId> {
        let probes = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, node)| async move {
                let hello = doc! {"hello": 1, "$db": "admin"};
                let answered = self
                    .rpc
                    .call(&node.host, hello, STATUS_PROBE_TIMEOUT)
                    .await
                    .is_ok();
                (!answered).then_some(*id)
            });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    fn rewrite_self(&self, reply: &mut Document, metrics: &RaftMetrics<TypeConfig>) {
        let state = self.member_state(metrics);
        reply.insert("myState", state.code());
        if let Ok(members) = reply.get_array_mut("members") {
            for member in members.iter_mut() {
                if let Bson::Document(member) = member {
                    let is_me = member.get_str("name").ok() == Some(self.host.as_str());
                    member.insert("self", is_me);
                    if is_me {
                        member.insert("health", 1.0);
                        member.insert("state", state.code());
                        member.insert("stateStr", state.name());
                    }
                }
            }
        }
    }

    fn local_status(
        &self,
        metrics: &RaftMetrics<TypeConfig>,
        unreachable: &BTreeSet<NodeId>,
    ) -> Document {
        let my_state = self.member_state(metrics);
        let membership = metrics.membership_config.membership();
        let primary = my_state == MemberState::Primary;
        let last_index = metrics.last_log_index.unwrap_or(0);
        let leader_time = self.entry_time(last_index);
        let stale_after = Duration::from_millis(self.options.election_timeout_ms * 3);
        let mut members: Vec<(i32, Document)> = Vec::new();
        for (id, node) in membership.nodes() {
            let is_me = *id == self.me;
            let matched = if is_me {
                metrics.last_applied
            } else if primary {
                metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
            } else {
                None
            };
            let heartbeat = if primary && !is_me {
                metrics
                    .heartbeat
                    .as_ref()
                    .and_then(|h| h.get(id).copied().flatten())
                    .map(|at| at.elapsed())
            } else {
                None
            };
            let (state, health) = if is_me {
                (my_state, 1.0)
            } else if primary {
                match heartbeat {
                    Some(age) if age < stale_after => (MemberState::Secondary, 1.0),
                    _ => (MemberState::Down, 0.0),
                }
            } else if unreachable.contains(id) {
                (MemberState::Down, 0.0)
            } else if metrics.current_leader == Some(*id) {
                (MemberState::Primary, 1.0)
            } else {
                (MemberState::Secondary, 1.0)
            };
            let mut member = doc! {
                "_id": node.id,
                "name": node.host.clone(),
                "health": health,
                "state": state.code(),
                "stateStr": state.name(),
                "uptime": i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX),
                "configVersion": Self::config_version(metrics),
                "configTerm": i64::try_from(metrics.current_term).unwrap_or(i64::MAX),
                "self": is_me,
            };
            if let Some(matched) = matched {
                member.insert("optime", op_time(matched.leader_id.term, matched.index));
                let when = self.entry_time(matched.index).or(leader_time).unwrap_or(0);
                member.insert("optimeDate", bson::DateTime::from_millis(when));
                member.insert(
                    "lagEntries",
                    i64::try_from(last_index.saturating_sub(matched.index)).unwrap_or(i64::MAX),
                );
                if let (Some(leader), false) = (leader_time, is_me && primary) {
                    member.insert("lagSeconds", ((leader - when).max(0) as f64) / 1000.0);
                }
            }
            if let Some(age) = heartbeat {
                let millis = bson::DateTime::now().timestamp_millis()
                    - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                member.insert("lastHeartbeat", bson::DateTime::from_millis(millis));
                member.insert(
                    "lastHeartbeatAgeMillis",
                    i64::try_from(age.as_millis()).unwrap_or(i64::MAX),
                );
            }
            if node.votes == 0 {
                member.insert("votes", 0);
            }
            members.push((node.id, member));
        }
        members.sort_by_key(|(id, _)| *id);
        let stats = Arc::clone(&self.state_machine().stats);
        let incarnation = self
            .incarnation
            .get()
            .map_or(Bson::Null, |i| Bson::Document(i.to_document()));
        doc! {
            "set": self.set_name.clone(),
            "date": bson::DateTime::now(),
            "myState": my_state.code(),
            "term": i64::try_from(metrics.current_term).unwrap_or(i64::MAX),
            "heartbeatIntervalMillis": i64::try_from((self.options.election_timeout_ms / 4).max(20)).unwrap_or(i64::MAX),
            "electionTimeoutMillis": i64::try_from(self.options.election_timeout_ms).unwrap_or(i64::MAX),
            "members": members.into_iter().map(|(_, m)| Bson::Document(m)).collect::<Vec<_>>(),
            "shoal": {
                "committedIndex": metrics.local_committed.map_or(0, |c| i64::try_from(c.index).unwrap_or(i64::MAX)),
                "appliedCommands": i64::try_from(stats.commands.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX),
                "deduplicatedRetries": i64::try_from(stats.deduplicated.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX),
                "partitionedFrom": self.partition.blocked().len() as i64,
                "incarnation": incarnation,
                "superseded": self.incarnation.is_superseded(),
            },
            "ok": 1.0,
        }
    }

    /// `replSetGetConfig`.
    pub fn config_document(&self) -> Result<Document, CommandError> {
        if !self.is_initiated() {
            return Err(CommandError::new(
                ErrorCode::NOT_YET_INITIALIZED,
                "no replset config has been received",
            ));
        }
        let metrics = self.metrics();
        Ok(self.config().to_document(
            Self::config_version(&metrics),
            metrics.current_term,
            self.options.election_timeout_ms,
        ))
    }

    /// Stops Raft (on shutdown).
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft().shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
    }
}

/// On the primary, hands over to a caught-up member of higher priority (MongoDB's priority
/// takeover); openraft elects without regard to priority.
async fn priority_supervisor(set: std::sync::Weak<ReplicaSet>) {
    let mut leader_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(PRIORITY_CHECK_INTERVAL).await;
        let Some(set) = set.upgrade() else {
            return;
        };
        set.apply_electability();
        set.check_majority().await;
        if !set.is_primary() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        // Let a new primary settle (and its secondaries report progress) first.
        if since.elapsed() < Duration::from_secs(2) {
            continue;
        }
        let metrics = set.metrics();
        let mine = metrics
            .membership_config
            .membership()
            .get_node(&set.me)
            .map_or(0, |n| n.priority_milli);
        if let Some(target) = set.best_successor(Some(mine)) {
            tracing::info!(set = %set.set_name, target, "handing over to a member of higher priority");
            if let Err(error) = set.raft().trigger().transfer_leader(target).await {
                tracing::warn!(%error, "priority takeover failed");
            }
        }
    }
}

/// One chunk of a streamed snapshot (`_shoalRaft: "snapshotChunk"`, field `chunk`).
struct SnapshotChunk {
    /// Which sending of a snapshot this chunk belongs to (chunks of an abandoned sending that
    /// arrive late must not mix into a new one).
    stream: u64,
    offset: u64,
    total: u64,
    data: Vec<u8>,
}

impl SnapshotChunk {
    fn from_request(request: &Document) -> Result<SnapshotChunk, CommandError> {
        let chunk = request
            .get_document("chunk")
            .map_err(|_| CommandError::bad_value("snapshot chunk without its chunk document"))?;
        let number = |field: &str| {
            chunk
                .get_i64(field)
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| {
                    CommandError::bad_value(format!("snapshot chunk without a valid {field}"))
                })
        };
        let data = match chunk.get("data") {
            Some(Bson::Binary(binary)) => binary.bytes.clone(),
            _ => return Err(CommandError::bad_value("snapshot chunk without data")),
        };
        Ok(SnapshotChunk {
            stream: number("stream")?,
            offset: number("offset")?,
            total: number("total")?,
            data,
        })
    }
}
