//! The runtime of one replica-set member, shared by `shoal-shard` and `shoal-config`: it opens
//! the document engine on the member's directory, serves the MongoDB wire protocol on TCP and
//! the internal RPC on QUIC (both on the same HOST:PORT, as mongod does with one port), and
//! dispatches every command through one function so that a command means the same thing
//! whichever way it arrives.
//!
//! A role adds its own commands through [`Extension`] (the config server's metadata commands);
//! everything else is the engine's. The replica set has one member until replication lands: the
//! member is always primary and says so in `hello`.

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::Context;
use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode};
use shoal_docstore::{AtomicOp, Engine};
use shoal_node::info;
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

    /// Runs once after the engine opens and before the member serves requests (e.g. the config
    /// server creates `config.version`).
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
    started: Instant,
    commands_total: AtomicU64,
}

impl MemberCore {
    /// `host:port` as other nodes and drivers name this member.
    pub fn host(&self) -> String {
        self.config.bind.to_string()
    }

    /// Runs an engine command off the async threads (RocksDB calls block).
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
        let host = self.host();
        reply.insert(info::writable_field(name), true);
        reply.insert("secondary", false);
        reply.insert("setName", self.config.replset.clone());
        reply.insert("setVersion", 1);
        reply.insert("hosts", vec![host.clone()]);
        reply.insert("primary", host.clone());
        reply.insert("me", host);
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
        status.insert(
            "repl",
            doc! {
                "setName": self.config.replset.clone(),
                "isWritablePrimary": true,
                "secondary": false,
                "hosts": [self.host()],
                "primary": self.host(),
                "me": self.host(),
            },
        );
        status
    }

    /// `_shoalApplyAtomic {ops: [{db, put: coll, doc} | {db, delete: coll, id} |
    /// {db, deleteIfUnchanged: coll, expect}]}`: several writes, possibly in several databases,
    /// as one atomic batch. Routers use it for steps that must not be split by a crash.
    async fn apply_atomic_command(&self, command: &Document) -> Result<Document, CommandError> {
        let ops = match command.get("ops") {
            Some(Bson::Array(ops)) => ops,
            Some(other) => return Err(CommandError::type_mismatch("ops", "array", other)),
            None => return Err(CommandError::missing_field("_shoalApplyAtomic", "ops")),
        };
        let mut parsed = Vec::with_capacity(ops.len());
        for op in ops {
            let op = op
                .as_document()
                .ok_or_else(|| CommandError::type_mismatch("ops", "object", op))?;
            parsed.push(parse_atomic_op(op)?);
        }
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || {
            let scoped: Vec<(&str, &AtomicOp)> =
                parsed.iter().map(|(db, op)| (db.as_str(), op)).collect();
            engine.apply_atomic_across(&scoped)
        })
        .await
        .map_err(|e| CommandError::internal(format!("atomic write task failed: {e}")))??;
        Ok(doc! {"ok": 1.0})
    }

    fn repl_set_get_status(&self) -> Document {
        let uptime = i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX);
        doc! {
            "set": self.config.replset.clone(),
            "date": bson::DateTime::now(),
            "myState": 1,
            "term": 1_i64,
            "members": [{
                "_id": 0,
                "name": self.host(),
                "health": 1.0,
                "state": 1,
                "stateStr": "PRIMARY",
                "uptime": uptime,
                "self": true,
            }],
            "ok": 1.0,
        }
    }
}

fn parse_atomic_op(op: &Document) -> Result<(String, AtomicOp), CommandError> {
    let db = op
        .get_str("db")
        .map_err(|_| CommandError::bad_value("atomic op without 'db'"))?;
    let coll = |field: &str| op.get_str(field).map(str::to_owned);
    let document = |field: &str| {
        op.get_document(field)
            .cloned()
            .map_err(|_| CommandError::bad_value(format!("atomic op without document '{field}'")))
    };
    let parsed = if let Ok(coll) = coll("put") {
        AtomicOp::Put {
            coll,
            doc: document("doc")?,
        }
    } else if let Ok(coll) = coll("delete") {
        let id = op
            .get("id")
            .cloned()
            .ok_or_else(|| CommandError::bad_value("atomic delete without 'id'"))?;
        AtomicOp::Delete { coll, id }
    } else if let Ok(coll) = coll("deleteIfUnchanged") {
        AtomicOp::DeleteIfUnchanged {
            coll,
            expect: document("expect")?,
        }
    } else {
        return Err(CommandError::bad_value(format!("unknown atomic op {op}")));
    };
    Ok((db.to_owned(), parsed))
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

async fn dispatch_named(
    core: &Arc<MemberCore>,
    extension: &dyn Extension,
    db: &str,
    command: Document,
    connection_id: u64,
    name: &str,
) -> Document {
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
        "replSetGetStatus" => Ok(core.repl_set_get_status()),
        "whatsmyuri" => Ok(doc! {"you": "", "ok": 1.0}),
        "_shoalApplyAtomic" => core.apply_atomic_command(&command).await,
        _ => {
            if let Some(future) = extension.handle(core, db, &command) {
                return future.await;
            }
            Ok(core.execute(db, command).await)
        }
    };
    reply.unwrap_or_else(|error| error.to_document())
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

/// Opens the member's state and serves both protocols until SIGINT/SIGTERM.
pub async fn run_member(config: MemberConfig, extension: Arc<dyn Extension>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("creating data directory {}", config.dir.display()))?;
    let engine = Engine::open(&config.dir.join("db"))
        .map_err(|e| anyhow::anyhow!("opening the document store: {e}"))?;
    let rpc = RpcClient::new(&config.tls).map_err(|e| anyhow::anyhow!("TLS client: {e}"))?;
    let core = Arc::new(MemberCore {
        engine: Arc::new(engine),
        config: config.clone(),
        rpc,
        started: Instant::now(),
        commands_total: AtomicU64::new(0),
    });
    extension
        .on_start(&core)
        .await
        .context("initialising the member")?;
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
        extension,
    });
    tracing::info!(replset = %config.replset, bind = %config.bind, role = ?config.role, "member ready");
    let rpc_task = tokio::spawn(rpc_server.run());
    let wire_task = tokio::spawn(shoal_wire::serve(listener, wire_handler));
    shoal_node::shutdown_signal().await;
    rpc_task.abort();
    wire_task.abort();
    // Dropping the last engine handle closes RocksDB cleanly; every acknowledged write is
    // already in its synced WAL.
    drop(core);
    Ok(())
}
