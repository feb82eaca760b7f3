//! Client command dispatch at the router. Each command is routed by where its namespace lives:
//! `config.*` on the config server, an unsharded collection on its database's primary shard, a
//! sharded collection on the shards owning the chunks its filter can touch.

mod admin;
mod catalog;
mod explain;
mod indexes;
mod info;
pub(crate) mod key_move;
mod read;
pub(crate) mod stale;
mod write;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bson::{Bson, Document};
use shoal_common::{CommandError, ErrorCode, Namespace, ShardId};
use shoal_wire::{CommandHandler, RequestContext};
use tracing::Instrument;

use crate::{
    cluster::Cluster,
    cursors::CursorTable,
    topology::{CollectionRouting, RoutingCache},
};

/// Counters behind `serverStatus.opcounters` at the router.
#[derive(Debug, Default)]
struct Counters {
    insert: AtomicU64,
    query: AtomicU64,
    update: AtomicU64,
    delete: AtomicU64,
    getmore: AtomicU64,
    command: AtomicU64,
}

/// The router's command handler.
pub struct Router {
    cluster: Arc<Cluster>,
    cursors: CursorTable,
    host: String,
    started: Instant,
    counters: Counters,
}

/// Where a namespace's documents live.
#[derive(Clone, Debug)]
pub enum Placement {
    /// A `config.*` collection, on the config server.
    Config,
    /// An unsharded collection on its database's primary shard.
    Unsharded(ShardId),
    /// A sharded collection.
    Sharded(CollectionRouting),
    /// The database does not exist yet.
    Missing,
}

/// How often a change to a database whose primary moves asks whether the move is done.
const MOVE_PRIMARY_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// How many times it asks before giving up (two minutes).
const MOVE_PRIMARY_POLLS_MAX: u32 = 1_200;

/// Fields a router does not pass to shards: cluster-time gossip, read preference (the router
/// chose the member), and `$db`, which each call sets itself. `lsid` and `txnNumber` do go
/// through: they say whether a write is retryable.
const FIELDS_NOT_FORWARDED: &[&str] = &[
    "$db",
    "$clusterTime",
    "$readPreference",
    "autocommit",
    "startTransaction",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
];

impl Router {
    /// A router over `cluster`, reporting `host` as its address.
    pub fn new(cluster: Arc<Cluster>, host: String) -> Router {
        Router {
            cluster,
            cursors: CursorTable::default(),
            host,
            started: Instant::now(),
            counters: Counters::default(),
        }
    }

    async fn dispatch(
        &self,
        ctx: &RequestContext,
        db: &str,
        command: Document,
    ) -> Result<Document, CommandError> {
        let name = command
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| CommandError::bad_value("empty command document"))?;
        self.counters.command.fetch_add(1, Ordering::Relaxed);
        shoal_common::ids::validate_db_name(db)?;
        refuse_transactions(&command)?;
        match name.as_str() {
            "hello" | "isMaster" | "ismaster" => Ok(self.hello(&name, &command, ctx.conn_id)),
            "ping" | "buildInfo" | "buildinfo" | "serverStatus" | "getParameter" | "getLog"
            | "hostInfo" | "getCmdLineOpts" | "whatsmyuri" | "endSessions" | "killSessions"
            | "killAllSessions" | "connectionStatus" | "listCommands" | "startSession"
            | "refreshSessions" => self.info_command(&name, &command),
            "insert" => self.insert(db, &command).await,
            "update" => self.update(db, &command).await,
            "delete" => self.delete(db, &command).await,
            "findAndModify" | "findandmodify" => self.find_and_modify(db, &name, &command).await,
            "find" => self.find(db, &command).await,
            "getMore" => self.get_more(db, &command).await,
            "killCursors" => self.kill_cursors(db, &command).await,
            "count" => self.count(db, &command).await,
            "distinct" => self.distinct(db, &command).await,
            "aggregate" => self.aggregate(db, &command).await,
            "listDatabases" => self.list_databases(db, &command).await,
            "listCollections" => self.list_collections(db, &command).await,
            "listIndexes" => self.list_indexes(db, &command).await,
            "create" => self.create(db, &command).await,
            "drop" => self.drop_collection(db, &command).await,
            "dropDatabase" => self.drop_database(db, &command).await,
            "addShard"
            | "listShards"
            | "removeShard"
            | "addShardToZone"
            | "removeShardFromZone"
            | "updateZoneKeyRange"
            | "movePrimary"
            | "enableSharding"
            | "shardCollection"
            | "split"
            | "mergeChunks"
            | "moveChunk"
            | "moveRange"
            | "balancerStatus"
            | "balancerStart"
            | "balancerStop"
            | "balancerCollectionStatus"
            | "configureCollectionBalancing" => self.admin_forward(db, &command).await,
            "flushRouterConfig" => self.flush_router_config().await,
            "explain" => self.explain_command(db, &command).await,
            "createIndexes" => self.create_indexes(db, &command).await,
            "dropIndexes" | "deleteIndexes" => self.drop_indexes(db, &command).await,
            "collMod" => self.coll_mod(db, &command).await,
            "renameCollection" => self.rename_collection(db, &command).await,
            _ => Err(CommandError::new(
                ErrorCode::COMMAND_NOT_FOUND,
                format!("no such command: '{name}'"),
            )),
        }
    }

    /// Where `ns` lives, from the current routing snapshot.
    async fn placement(
        &self,
        ns: &Namespace,
    ) -> Result<(Placement, Arc<RoutingCache>), CommandError> {
        let routing = self.cluster.routing().await?;
        Ok((placement_in(&routing, ns), routing))
    }

    /// The placement of a write that must not create the database (an update or delete without
    /// upsert matches nothing in a database that does not exist).
    async fn placement_for_read_of_write(
        &self,
        ns: &Namespace,
    ) -> Result<(Placement, Arc<RoutingCache>), CommandError> {
        refuse_internal_write(ns)?;
        self.placement_for_ddl(ns).await
    }

    /// The placement of a change to `ns` (a write or DDL), once no `movePrimary` of its
    /// database is copying it: a change during the copy could be missed by it, and afterwards
    /// it must go to the new primary.
    async fn placement_for_ddl(
        &self,
        ns: &Namespace,
    ) -> Result<(Placement, Arc<RoutingCache>), CommandError> {
        let (placement, routing) = self.placement(ns).await?;
        self.after_primary_move(ns, placement, routing).await
    }

    async fn after_primary_move(
        &self,
        ns: &Namespace,
        mut placement: Placement,
        mut routing: Arc<RoutingCache>,
    ) -> Result<(Placement, Arc<RoutingCache>), CommandError> {
        for _ in 0..MOVE_PRIMARY_POLLS_MAX {
            let moving = matches!(placement, Placement::Unsharded(_))
                && routing
                    .databases
                    .get(&ns.db)
                    .is_some_and(|database| database.moving_primary);
            if !moving {
                return Ok((placement, routing));
            }
            tokio::time::sleep(MOVE_PRIMARY_POLL_INTERVAL).await;
            routing = self.cluster.refresh().await?;
            placement = placement_in(&routing, ns);
        }
        Err(CommandError::new(
            ErrorCode::MOVE_PRIMARY_IN_PROGRESS,
            format!(
                "movePrimary of database {} did not finish within {:?}; retry",
                ns.db,
                MOVE_PRIMARY_POLL_INTERVAL * MOVE_PRIMARY_POLLS_MAX
            ),
        ))
    }

    /// Like [`Router::placement`], creating the database first when a write needs it.
    async fn placement_for_write(
        &self,
        ns: &Namespace,
    ) -> Result<(Placement, Arc<RoutingCache>), CommandError> {
        refuse_internal_write(ns)?;
        let (placement, routing) = self.placement_for_ddl(ns).await?;
        if !matches!(placement, Placement::Missing) {
            return Ok((placement, routing));
        }
        let (_, routing) = self.cluster.ensure_database(&ns.db).await?;
        Ok((placement_in(&routing, ns), routing))
    }

    /// The address of the server holding an unsharded namespace's data.
    fn unsharded_host(
        &self,
        placement: &Placement,
        routing: &RoutingCache,
    ) -> Result<Option<String>, CommandError> {
        match placement {
            Placement::Config => Ok(Some(self.cluster.config_host().to_owned())),
            Placement::Unsharded(shard) => Ok(Some(routing.shard_host(shard)?.to_owned())),
            Placement::Missing => Ok(None),
            Placement::Sharded(_) => Err(CommandError::internal(
                "unsharded_host on a sharded collection",
            )),
        }
    }

    async fn flush_router_config(&self) -> Result<Document, CommandError> {
        self.cluster.refresh().await?;
        Ok(bson::doc! {"flushed": true, "ok": 1.0})
    }
}

/// Client writes go to user databases only; `config`, `admin` and `local` are the cluster's, and
/// `system.*` collections are the server's. The exception is `config.settings`, which users edit
/// through mongos in MongoDB too (`chunksize`, `autosplit`, the balancer's settings).
fn refuse_internal_write(ns: &Namespace) -> Result<(), CommandError> {
    if ns.db == "config" && ns.coll == "settings" {
        return Ok(());
    }
    if matches!(ns.db.as_str(), "config" | "admin" | "local") || ns.coll.starts_with("system.") {
        return Err(CommandError::new(
            ErrorCode::INVALID_NAMESPACE,
            format!("cannot write to '{ns}' through the router"),
        ));
    }
    Ok(())
}

/// Multi-document transactions are not available yet: a statement that starts or continues one
/// is refused rather than run outside it (which would keep writes the client later aborts).
fn refuse_transactions(command: &Document) -> Result<(), CommandError> {
    let starts = matches!(command.get("startTransaction"), Some(Bson::Boolean(true)));
    let inside = matches!(command.get("autocommit"), Some(Bson::Boolean(false)));
    if starts || inside {
        return Err(CommandError::new(
            ErrorCode::ILLEGAL_OPERATION,
            "multi-document transactions are not supported by Shoal yet",
        ));
    }
    Ok(())
}

fn placement_in(routing: &RoutingCache, ns: &Namespace) -> Placement {
    if ns.db == "config" {
        return Placement::Config;
    }
    if let Some(collection) = routing.collection(ns) {
        return Placement::Sharded(collection.clone());
    }
    match routing.databases.get(&ns.db) {
        Some(database) => Placement::Unsharded(database.primary.clone()),
        None => Placement::Missing,
    }
}

/// A copy of a client command fit to send to a shard.
fn shard_command(command: &Document) -> Document {
    let mut forwarded = command.clone();
    for field in FIELDS_NOT_FORWARDED {
        forwarded.remove(*field);
    }
    forwarded
}

/// The namespace a collection command names in its first field.
fn command_namespace(db: &str, command: &Document, name: &str) -> Result<Namespace, CommandError> {
    match command.get(name) {
        Some(Bson::String(coll)) => Namespace::new(db, coll),
        Some(other) => Err(CommandError::new(
            ErrorCode::INVALID_NAMESPACE,
            format!(
                "collection name has invalid type {}",
                shoal_common::error::type_name(other)
            ),
        )),
        None => Err(CommandError::bad_value(format!("missing '{name}'"))),
    }
}

/// A document-typed optional field.
fn document_field<'a>(
    command: &'a Document,
    field: &str,
) -> Result<Option<&'a Document>, CommandError> {
    match command.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(value)) => Ok(Some(value)),
        Some(other) => Err(CommandError::type_mismatch(field, "object", other)),
    }
}

/// A non-negative integer optional field.
fn count_field(command: &Document, field: &str) -> Result<Option<u64>, CommandError> {
    let Some(value) = integer_field(command, field)? else {
        return Ok(None);
    };
    if value < 0 {
        return Err(CommandError::new(
            ErrorCode(51024),
            format!("BSON field '{field}' value must be >= 0, actual value '{value}'"),
        ));
    }
    Ok(Some(value as u64))
}

/// An optional whole-number field of any numeric BSON type.
fn integer_field(command: &Document, field: &str) -> Result<Option<i64>, CommandError> {
    match command.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Int32(v)) => Ok(Some(i64::from(*v))),
        Some(Bson::Int64(v)) => Ok(Some(*v)),
        Some(Bson::Double(v)) if v.fract() == 0.0 => Ok(Some(*v as i64)),
        Some(other) => Err(CommandError::type_mismatch(field, "long", other)),
    }
}

/// An integer field of a reply, whatever its numeric BSON type; 0 when absent.
fn int_field(doc: &Document, field: &str) -> i64 {
    match doc.get(field) {
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

impl CommandHandler for Router {
    async fn handle(&self, ctx: RequestContext, db: String, command: Document) -> Document {
        let name = command.keys().next().cloned().unwrap_or_default();
        let span = tracing::debug_span!("request", conn = ctx.conn_id, db = %db, command = %name);
        let preference = match shoal_repl::ReadPreference::of(&command) {
            Ok(preference) => preference,
            Err(error) => return error.to_document(),
        };
        let work = self.dispatch(&ctx, &db, command).instrument(span);
        match crate::cluster::READ_PREFERENCE
            .scope(preference, work)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                tracing::debug!(code = error.code.0, error = %error.errmsg, "command failed");
                error.to_document()
            }
        }
    }
}
