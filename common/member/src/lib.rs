//! The runtime of one replica-set member, shared by `shoal-shard` and `shoal-config`: it opens
//! the document engine on the member's directory, joins its replica set (Raft, `shoal-repl`),
//! serves the MongoDB wire protocol on TCP and the internal RPC on QUIC (both on the same
//! HOST:PORT, as mongod does with one port), and dispatches every command through one function
//! so that a command means the same thing whichever way it arrives.
//!
//! Writes go through the replicated log and are applied by every member; reads run on the
//! local engine, on a secondary only when the client accepts one (`$readPreference` other than
//! `primary`). A role adds its own commands through [`Extension`] (the config server's metadata
//! commands); everything else is the engine's.
//!
//! `_shoalCheckpoint` ([`checkpoint`]) copies the member's storage for a physical backup;
//! `_shoalOplogRead` ([`oplog`]) feeds the oplog archive of point-in-time recovery.

pub mod checkpoint;
pub mod oplog;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
    time::Instant,
};

use anyhow::Context;
use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode};
use shoal_docstore::{Engine, Kv, RocksKv};
use shoal_node::info;
use shoal_repl::{ReplOptions, ReplicaSet, replicated_engine};
use shoal_rpc::{RpcClient, RpcHandler, RpcServer, certs::TlsPaths};
use shoal_wire::{CommandHandler, RequestContext};
use tracing::Instrument;

/// What a member is for; it changes `hello` (`configsvr`) and the process name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A shard member holding user documents.
    Shard,
    /// A config-server member holding cluster metadata.
    Config,
}

/// A member's identity and where it keeps its state.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// The replica-set name (also the shard id for shards).
    pub replset: String,
    /// The address both protocols bind to.
    pub bind: SocketAddr,
    /// The data directory.
    pub dir: PathBuf,
    /// Certificates for the internal RPC.
    pub tls: TlsPaths,
    /// The member's role.
    pub role: Role,
    /// Members to initiate the set with on first start (empty: wait for `replSetInitiate`).
    pub initiate_members: Vec<String>,
    /// Replication timing.
    pub repl: ReplOptions,
}

impl MemberConfig {
    /// The configuration a member's command line describes.
    pub fn from_args(args: shoal_node::MemberArgs, role: Role) -> anyhow::Result<MemberConfig> {
        let tls = args
            .tls
            .resolve(Some(&args.dir))
            .map_err(anyhow::Error::msg)?;
        Ok(MemberConfig {
            replset: args.replset,
            bind: args.bind,
            dir: args.dir,
            tls,
            role,
            initiate_members: args.initiate_members,
            repl: ReplOptions {
                election_timeout_ms: args.election_timeout_ms.clamp(50, 60_000),
                snapshot_entries: args.snapshot_entries.max(100),
            },
        })
    }
}

/// A boxed future returning a reply document.
pub type ReplyFuture<'a> = Pin<Box<dyn Future<Output = Document> + Send + 'a>>;

/// Commands a role adds on top of the engine's.
pub trait Extension: Send + Sync + 'static {
    /// Returns the reply future when `command` is one of the role's commands, `None` otherwise.
    fn handle<'a>(
        &'a self,
        member: &'a Arc<MemberCore>,
        db: &'a str,
        command: &'a Document,
    ) -> Option<ReplyFuture<'a>>;

    /// Runs on the primary, once it is elected (again after a failure, until it succeeds; it
    /// must be idempotent): e.g. the config server creates `config.version`.
    fn on_start<'a>(&'a self, member: &'a Arc<MemberCore>) -> StartFuture<'a> {
        let _ = member;
        Box::pin(async { Ok(()) })
    }
}

/// The future [`Extension::on_start`] returns.
pub type StartFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// A role with no commands of its own (a shard).
#[derive(Debug, Default)]
pub struct NoExtension;

impl Extension for NoExtension {
    fn handle<'a>(
        &'a self,
        _member: &'a Arc<MemberCore>,
        _db: &'a str,
        _command: &'a Document,
    ) -> Option<ReplyFuture<'a>> {
        None
    }
}

/// The state every command handler of a member shares.
pub struct MemberCore {
    /// The document engine.
    pub engine: Arc<Engine>,
    /// Identity and paths.
    pub config: MemberConfig,
    /// A client for calls to other cluster members.
    pub rpc: RpcClient,
    /// This member's replication.
    pub repl: Arc<ReplicaSet>,
    /// Calls to other replica sets (shards, from the config server), following their primaries.
    pub topology: shoal_repl::Topology,
    /// The member's RocksDB itself, under the wrappers the engine and replication write through;
    /// only for what works on the whole database (checkpoints).
    pub storage: Arc<RocksKv>,
    started: Instant,
    commands_total: AtomicU64,
}

impl MemberCore {
    /// `host:port` as other nodes and drivers name this member.
    pub fn host(&self) -> String {
        self.config.bind.to_string()
    }

    /// Replicates a write command through the log and returns its reply once its write concern
    /// is met (or `writeConcernError`).
    pub async fn replicate(&self, db: &str, command: Document) -> Document {
        self.repl.write(db, command).await
    }

    /// Waits until this primary has applied everything committed before now (a ReadIndex
    /// round), so a read-modify-write of metadata starts from the latest state.
    pub async fn barrier(&self) -> Result<(), CommandError> {
        self.repl.ensure_linearizable().await
    }

    /// Runs an engine command on the local state, off the async threads (RocksDB calls block).
    pub async fn execute(&self, db: &str, command: Document) -> Document {
        let engine = Arc::clone(&self.engine);
        let db = db.to_owned();
        match tokio::task::spawn_blocking(move || engine.execute(&db, &command)).await {
            Ok(reply) => reply,
            Err(join_error) => {
                tracing::error!(error = %join_error, "engine command panicked");
                CommandError::internal("the command failed inside the storage engine").to_document()
            }
        }
    }

    fn hello(&self, name: &str, command: &Document, connection_id: u64) -> Document {
        let mut reply = info::hello_common(command, connection_id);
        let mut fields = Document::new();
        self.repl.hello_fields(&mut fields);
        for (key, value) in fields {
            let key = if key == "isWritablePrimary" {
                info::writable_field(name).to_owned()
            } else {
                key
            };
            reply.insert(key, value);
        }
        if self.config.role == Role::Config {
            reply.insert("configsvr", 2);
        }
        reply.insert("ok", 1.0);
        reply
    }

    fn server_status(&self) -> Document {
        let stats = self.engine.stats();
        let counters = info::OpCounters {
            insert: stats.inserts,
            query: stats.queries,
            update: stats.updates,
            delete: stats.deletes,
            getmore: stats.getmores,
            command: self.commands_total.load(Ordering::Relaxed),
        };
        let process = match self.config.role {
            Role::Shard => "shoal-shard",
            Role::Config => "shoal-config",
        };
        let mut status = info::server_status(&self.host(), process, self.started, counters, 0);
        let mut repl = Document::new();
        self.repl.hello_fields(&mut repl);
        status.insert("repl", repl);
        status
    }
}

/// Runs one command: the server-information commands every server answers, then the role's
/// extension, then the engine.
pub async fn dispatch(
    core: &Arc<MemberCore>,
    extension: &dyn Extension,
    db: &str,
    command: Document,
    connection_id: u64,
) -> Document {
    core.commands_total.fetch_add(1, Ordering::Relaxed);
    let Some(name) = info::command_name(&command).map(str::to_owned) else {
        return CommandError::bad_value("empty command document").to_document();
    };
    let span = tracing::debug_span!("command", command = %name, db = %db);
    dispatch_named(core, extension, db, command, connection_id, &name)
        .instrument(span)
        .await
}

/// Commands that change data: replicated through the log, accepted only by the primary.
const WRITE_COMMANDS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "create",
    "drop",
    "dropDatabase",
    "createIndexes",
    "dropIndexes",
    "deleteIndexes",
    "collMod",
    "renameCollection",
    "_shoalApplyAtomic",
    "_shoalSetFiltering",
    "_shoalMigrateApply",
    "_shoalDeleteRange",
];

/// Whether the client accepts an answer from a secondary (`$readPreference` other than
/// `primary`, as drivers and routers send it).
fn secondary_ok(command: &Document) -> bool {
    match command.get("$readPreference") {
        Some(Bson::Document(pref)) => pref.get_str("mode").is_ok_and(|mode| mode != "primary"),
        _ => false,
    }
}

/// `force` of `replSetReconfig`: a boolean, or a number as some drivers send flags.
fn force_option(command: &Document) -> Result<bool, CommandError> {
    match command.get("force") {
        None | Some(Bson::Null) => Ok(false),
        Some(Bson::Boolean(force)) => Ok(*force),
        Some(Bson::Int32(n)) => Ok(*n != 0),
        Some(Bson::Int64(n)) => Ok(*n != 0),
        Some(Bson::Double(n)) => Ok(*n != 0.0),
        Some(other) => Err(CommandError::type_mismatch("force", "bool", other)),
    }
}

fn read_concern_level(command: &Document) -> Option<&str> {
    command
        .get_document("readConcern")
        .ok()
        .and_then(|rc| rc.get_str("level").ok())
}

async fn dispatch_named(
    core: &Arc<MemberCore>,
    extension: &dyn Extension,
    db: &str,
    command: Document,
    connection_id: u64,
    name: &str,
) -> Document {
    let repl = &core.repl;
    let reply = match name {
        "hello" | "isMaster" | "ismaster" => Ok(core.hello(name, &command, connection_id)),
        "ping" => Ok(doc! {"ok": 1.0}),
        "buildInfo" | "buildinfo" => Ok(info::build_info()),
        "serverStatus" => Ok(core.server_status()),
        "getParameter" => info::get_parameter(&command),
        "getLog" => info::get_log(&command),
        "hostInfo" => Ok(info::host_info()),
        "getCmdLineOpts" => Ok(info::cmd_line_opts()),
        "endSessions" | "killSessions" | "killAllSessions" => Ok(doc! {"ok": 1.0}),
        "whatsmyuri" => Ok(doc! {"you": "", "ok": 1.0}),
        "_shoalRaft" => return repl.handle_raft(&command).await,
        "replSetGetStatus" => {
            let local = matches!(command.get("_shoalLocal"), Some(Bson::Boolean(true)));
            repl.status(local).await
        }
        "replSetGetConfig" => repl
            .config_document()
            .map(|config| doc! {"config": config, "ok": 1.0}),
        "replSetInitiate" => match command.get("replSetInitiate") {
            // `{}` (as mongod) or no document: a set of this member alone.
            Some(Bson::Document(config)) if !config.is_empty() => repl.initiate(Some(config)).await,
            _ => repl.initiate(None).await,
        },
        "replSetReconfig" => match command.get("replSetReconfig") {
            Some(Bson::Document(config)) => match force_option(&command) {
                Ok(true) => repl.reconfig_forced(config).await,
                Ok(false) => repl.reconfig(config).await,
                Err(error) => Err(error),
            },
            Some(other) => Err(CommandError::type_mismatch(
                "replSetReconfig",
                "object",
                other,
            )),
            None => Err(CommandError::missing_field(
                "replSetReconfig",
                "replSetReconfig",
            )),
        },
        "replSetStepDown" => repl.step_down().await,
        "_shoalCheckpoint" => make_checkpoint(core, db, &command).await,
        "_shoalOplogRead" => read_oplog(core, db, command).await,
        "_shoalPartition" => {
            // Fault injection for failure tests: drop Raft traffic with these members.
            let hosts: Vec<String> = command
                .get_array("_shoalPartition")
                .map(|hosts| {
                    hosts
                        .iter()
                        .filter_map(|h| h.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            repl.set_partition(&hosts);
            Ok(doc! {"ok": 1.0})
        }
        _ if WRITE_COMMANDS.contains(&name) => {
            if let Some(future) = extension.handle(core, db, &command) {
                return future.await;
            }
            return core.replicate(db, command).await;
        }
        _ => {
            if let Some(future) = extension.handle(core, db, &command) {
                return future.await;
            }
            match check_read(core, &command).await {
                Ok(()) => Ok(core.execute(db, command).await),
                Err(error) => Err(error),
            }
        }
    };
    reply.unwrap_or_else(|error| error.to_document())
}

/// `_shoalCheckpoint: 1, dir?`: a RocksDB checkpoint of this member (see [`checkpoint`]), on the
/// admin database of any member, primary or not.
async fn make_checkpoint(
    core: &Arc<MemberCore>,
    db: &str,
    command: &Document,
) -> Result<Document, CommandError> {
    if db != "admin" {
        return Err(CommandError::admin_only("_shoalCheckpoint"));
    }
    let dir = checkpoint::requested_dir(command, &core.config.dir)?;
    let storage = Arc::clone(&core.storage);
    let made = tokio::task::spawn_blocking(move || checkpoint::create(&storage, &dir))
        .await
        .map_err(|join_error| {
            tracing::error!(error = %join_error, "checkpoint task panicked");
            CommandError::internal("the checkpoint failed inside the storage engine")
        })??;
    tracing::info!(
        dir = %made.dir.display(),
        applied_index = made.applied.index,
        files = made.files.len(),
        "checkpoint made"
    );
    Ok(made.to_reply(&core.config.replset, &core.host()))
}

/// `_shoalOplogRead: 1, after, limit?`: applied log entries for the archive (see [`oplog`]), on
/// the admin database of any member.
async fn read_oplog(
    core: &Arc<MemberCore>,
    db: &str,
    command: Document,
) -> Result<Document, CommandError> {
    if db != "admin" {
        return Err(CommandError::admin_only("_shoalOplogRead"));
    }
    let kv: Arc<dyn Kv> = Arc::clone(&core.storage) as Arc<dyn Kv>;
    let set = core.config.replset.clone();
    tokio::task::spawn_blocking(move || oplog::read(&kv, &set, &command))
        .await
        .map_err(|join_error| {
            tracing::error!(error = %join_error, "oplog read task panicked");
            CommandError::internal("the oplog read failed inside the storage engine")
        })?
}

/// Whether this member may answer the read `command` now.
async fn check_read(core: &Arc<MemberCore>, command: &Document) -> Result<(), CommandError> {
    let repl = &core.repl;
    if read_concern_level(command) == Some("linearizable") {
        return repl.ensure_linearizable().await;
    }
    if repl.is_primary() {
        return Ok(());
    }
    if !repl.can_serve_reads() {
        return Err(CommandError::new(
            ErrorCode::NOT_PRIMARY_OR_SECONDARY,
            "node is not in primary or recovering state",
        ));
    }
    if secondary_ok(command)
        || command.contains_key("getMore")
        || command.contains_key("killCursors")
    {
        return Ok(());
    }
    Err(CommandError::new(
        ErrorCode::NOT_PRIMARY_NO_SECONDARY_OK,
        "not primary and secondaryOk=false",
    ))
}

struct WireHandler {
    core: Arc<MemberCore>,
    extension: Arc<dyn Extension>,
}

impl CommandHandler for WireHandler {
    async fn handle(&self, ctx: RequestContext, db: String, command: Document) -> Document {
        dispatch(&self.core, &*self.extension, &db, command, ctx.conn_id).await
    }
}

struct QuicHandler {
    core: Arc<MemberCore>,
    extension: Arc<dyn Extension>,
}

impl RpcHandler for QuicHandler {
    fn handle(
        &self,
        _peer: SocketAddr,
        request: Document,
    ) -> Pin<Box<dyn Future<Output = Document> + Send + '_>> {
        Box::pin(async move {
            let db = match request.get("$db") {
                Some(Bson::String(db)) => db.clone(),
                Some(other) => {
                    return CommandError::type_mismatch("$db", "string", other).to_document();
                }
                None => {
                    return CommandError::new(ErrorCode::BAD_VALUE, "internal request without $db")
                        .to_document();
                }
            };
            dispatch(&self.core, &*self.extension, &db, request, 0).await
        })
    }
}

/// How often a member checks whether it became primary and still owes the role's start-up work.
const PRIMARY_WORK_INTERVAL: Duration = Duration::from_millis(200);

/// Opens the member's state and serves both protocols until SIGINT/SIGTERM.
pub async fn run_member(config: MemberConfig, extension: Arc<dyn Extension>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("creating data directory {}", config.dir.display()))?;
    let rocks = Arc::new(
        RocksKv::open(&config.dir.join(checkpoint::DB_SUBDIR))
            .map_err(|e| anyhow::anyhow!("opening the document store: {e}"))?,
    );
    let storage: Arc<dyn Kv> = Arc::clone(&rocks) as Arc<dyn Kv>;
    let engine = Arc::new(
        replicated_engine(Arc::clone(&storage))
            .map_err(|e| anyhow::anyhow!("opening the document store: {e}"))?,
    );
    let rpc = RpcClient::new(&config.tls).map_err(|e| anyhow::anyhow!("TLS client: {e}"))?;
    let repl = ReplicaSet::open(
        Arc::clone(&engine),
        storage,
        &config.dir.join(shoal_repl::snapshot::SNAPSHOTS_SUBDIR),
        &config.bind.to_string(),
        &config.replset,
        rpc.clone(),
        config.repl.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting replication: {e}"))?;
    let core = Arc::new(MemberCore {
        engine,
        config: config.clone(),
        topology: shoal_repl::Topology::new(rpc.clone()),
        storage: rocks,
        rpc,
        repl,
        started: Instant::now(),
        commands_total: AtomicU64::new(0),
    });
    let quic_handler = Arc::new(QuicHandler {
        core: Arc::clone(&core),
        extension: Arc::clone(&extension),
    });
    let rpc_server = RpcServer::bind(config.bind, &config.tls, quic_handler)
        .map_err(|e| anyhow::anyhow!("binding QUIC on {}: {e}", config.bind))?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("binding TCP on {}", config.bind))?;
    let wire_handler = Arc::new(WireHandler {
        core: Arc::clone(&core),
        extension: Arc::clone(&extension),
    });
    tracing::info!(replset = %config.replset, bind = %config.bind, role = ?config.role, "member ready");
    let rpc_task = tokio::spawn(rpc_server.run());
    let wire_task = tokio::spawn(shoal_wire::serve(listener, wire_handler));
    let initiate_task = tokio::spawn(initiate_if_asked(Arc::clone(&core)));
    let primary_task = tokio::spawn(primary_work(Arc::clone(&core), extension));
    shoal_node::shutdown_signal().await;
    rpc_task.abort();
    wire_task.abort();
    initiate_task.abort();
    primary_task.abort();
    core.repl.shutdown().await;
    // Dropping the last engine handle closes RocksDB cleanly; every acknowledged write is
    // already in its synced log.
    drop(core);
    Ok(())
}

/// `--initiate-members`: the first member listed initiates the set on its first start.
async fn initiate_if_asked(core: Arc<MemberCore>) {
    let hosts = &core.config.initiate_members;
    if hosts.first() != Some(&core.host()) || core.repl.is_initiated() {
        return;
    }
    let members: Vec<Bson> = hosts
        .iter()
        .enumerate()
        .map(|(id, host)| Bson::Document(doc! {"_id": id as i32, "host": host.clone()}))
        .collect();
    let config = doc! {"_id": core.config.replset.clone(), "members": members};
    match core.repl.initiate(Some(&config)).await {
        Ok(_) => {}
        Err(error) if error.code == ErrorCode::ALREADY_INITIALIZED => {}
        Err(error) => {
            tracing::error!(%error, "initiating the replica set from --initiate-members failed")
        }
    }
}

/// Runs the role's start-up work ([`Extension::on_start`]) once this member is primary, and
/// again after each failure; stops after the first success.
async fn primary_work(core: Arc<MemberCore>, extension: Arc<dyn Extension>) {
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(PRIMARY_WORK_INTERVAL).await;
        if !core.repl.is_primary() {
            continue;
        }
        match extension.on_start(&core).await {
            Ok(()) => return,
            Err(error) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    tracing::warn!(%error, failures, "primary start-up work failed; retrying");
                }
            }
        }
    }
}
