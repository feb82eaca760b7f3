//! The config server's commands: the sharding administration that routers forward
//! (`addShard`, `listShards`, `removeShard` (in [`crate::drain`]), `enableSharding`,
//! `shardCollection`, `split`, `moveChunk`, `movePrimary` (in [`crate::move_primary`]), the zone
//! commands (in [`crate::zones`]), `balancerStatus`) and the internal ones routers use (`_shoalGetRoutingTable`,
//! `_shoalEnsureDatabase`, `_shoalDropCollection`, `_shoalDropDatabase`).
//!
//! Metadata writes are serialized by one lock and each is a single atomic engine batch that also
//! bumps the routing-metadata version, which is how routers learn that their cache is old.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use bson::{Bson, Document, doc, oid::ObjectId};
use shoal_common::{
    CollectionUuid, CommandError, Epoch, ErrorCode, Namespace, ShardId,
    chunks::{Chunk, ChunkMap, ShardKeyPattern},
    failpoint, ids,
};
use shoal_docstore::AtomicOp;
use shoal_member::{Extension, MemberCore, ReplyFuture, StartFuture};
use tracing::Instrument;

use crate::{
    catalog::{self, ShardConnection, ShardedCollection, coll},
    store,
};

/// How long the config server waits for a shard to answer during `addShard` or `moveChunk`.
const SHARD_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The config server's command extension.
#[derive(Clone, Debug, Default)]
pub struct ConfigServer {
    /// Serializes metadata changes: each reads, decides and writes without interleaving.
    pub(crate) metadata_lock: Arc<tokio::sync::Mutex<()>>,
    /// Whether this process started its auto-splitter (it runs once per process and acts only
    /// while the member is primary).
    autosplit_started: Arc<std::sync::atomic::AtomicBool>,
    /// One chunk migration at a time (held for a whole migration and each range deletion).
    pub(crate) migration_lock: Arc<tokio::sync::Mutex<()>>,
    /// Serializes ownership pushes to shards, so an older view never lands after a newer one.
    pub(crate) filtering_lock: Arc<tokio::sync::Mutex<()>>,
    /// The databases whose primary this process is moving (`movePrimary`).
    pub(crate) moving_databases: Arc<crate::move_primary::MovingDatabases>,
    /// The balancer's in-memory state (see [`crate::balancer`]).
    pub(crate) balancer: Arc<crate::balancer::BalancerState>,
}

/// The most initial chunks `shardCollection` creates for a hashed key (MongoDB's limit).
const INITIAL_CHUNKS_MAX: usize = 8192;

const COMMANDS: &[&str] = &[
    "addShard",
    "listShards",
    "removeShard",
    "addShardToZone",
    "removeShardFromZone",
    "updateZoneKeyRange",
    "movePrimary",
    "enableSharding",
    "shardCollection",
    "split",
    "mergeChunks",
    "configureCollectionBalancing",
    "moveChunk",
    "moveRange",
    "_shoalSyncShardFiltering",
    "balancerStatus",
    "balancerStart",
    "balancerStop",
    "balancerCollectionStatus",
    "_shoalEnsureDatabase",
    "_shoalGetRoutingTable",
    "_shoalDropCollection",
    "_shoalDropDatabase",
];

impl Extension for ConfigServer {
    fn handle<'a>(
        &'a self,
        member: &'a Arc<MemberCore>,
        db: &'a str,
        command: &'a Document,
    ) -> Option<ReplyFuture<'a>> {
        let name = command.keys().next()?.as_str();
        if !COMMANDS.contains(&name) {
            return None;
        }
        Some(Box::pin(async move {
            let span = tracing::info_span!("metadata", command = name);
            match self.run(member, db, name, command).instrument(span).await {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::info!(code = error.code.0, error = %error.errmsg, "metadata command failed");
                    error.to_document()
                }
            }
        }))
    }

    fn on_start<'a>(&'a self, member: &'a Arc<MemberCore>) -> StartFuture<'a> {
        Box::pin(async move {
            self.initialise(member)
                .await
                .map_err(|e| anyhow::anyhow!("initialising config: {e}"))?;
            if !self
                .autosplit_started
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                tokio::spawn(self.clone().autosplit_loop(Arc::clone(member)));
                tokio::spawn(self.clone().range_deleter_loop(Arc::clone(member)));
            }
            self.start_balancer(member);
            tokio::spawn(self.clone().recover_interrupted_moves(Arc::clone(member)));
            Ok(())
        })
    }
}

impl ConfigServer {
    /// Creates `config.version` (the cluster id), the balancer setting and the routing version
    /// on first start.
    async fn initialise(&self, core: &Arc<MemberCore>) -> Result<(), CommandError> {
        let _guard = self.metadata_lock.lock().await;
        // Each document only if missing: a metadata command may already have run on this
        // primary (it can be elected and serve before this work runs), and the routing version
        // must never go backwards.
        let mut ops = Vec::new();
        if store::find_one(core, coll::VERSION, 1).await?.is_none() {
            ops.push(put(
                coll::VERSION,
                doc! {"_id": 1, "clusterId": ObjectId::new()},
            ));
        }
        if store::find_one(core, coll::SETTINGS, "balancer")
            .await?
            .is_none()
        {
            ops.push(put(
                coll::SETTINGS,
                // Running from the start, as MongoDB's balancer is: adding a shard is enough
                // to spread data onto it.
                doc! {"_id": "balancer", "mode": "full", "stopped": false},
            ));
        }
        if store::find_one(core, coll::SHOAL_METADATA, "routing")
            .await?
            .is_none()
        {
            ops.push(put(
                coll::SHOAL_METADATA,
                doc! {"_id": "routing", "version": 1_i64},
            ));
        }
        if ops.is_empty() {
            return Ok(());
        }
        store::apply(core, ops).await
    }

    async fn run(
        &self,
        core: &Arc<MemberCore>,
        db: &str,
        name: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        if !name.starts_with("_shoal") && db != "admin" {
            return Err(CommandError::admin_only(name));
        }
        match name {
            "listShards" => self.list_shards(core).await,
            "balancerStatus" => self.balancer_status(core).await,
            "balancerStart" => self.balancer_switch(core, true).await,
            "balancerStop" => self.balancer_switch(core, false).await,
            "balancerCollectionStatus" => self.balancer_collection_status(core, command).await,
            "_shoalGetRoutingTable" => self.routing_table(core, command).await,
            // Migrations take the metadata lock only around their metadata reads and commit.
            "moveChunk" | "moveRange" => self.move_chunk_command(core, name, command).await,
            "_shoalSyncShardFiltering" => self.sync_filtering_command(core, command).await,
            "movePrimary" => self.move_primary(core, command).await,
            _ => {
                self.refuse_while_moving(name, command)?;
                let _guard = self.metadata_lock.lock().await;
                self.run_locked(core, name, command).await
            }
        }
    }

    async fn run_locked(
        &self,
        core: &Arc<MemberCore>,
        name: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        match name {
            "addShard" => self.add_shard(core, command).await,
            "removeShard" => self.remove_shard(core, command).await,
            "addShardToZone" => self.add_shard_to_zone(core, command).await,
            "removeShardFromZone" => self.remove_shard_from_zone(core, command).await,
            "updateZoneKeyRange" => self.update_zone_key_range(core, command).await,
            "enableSharding" => self.enable_sharding(core, command).await,
            "shardCollection" => self.shard_collection(core, command).await,
            "split" => self.split(core, command).await,
            "mergeChunks" => self.merge_chunks(core, command).await,
            "configureCollectionBalancing" => self.configure_balancing(core, command).await,
            "_shoalEnsureDatabase" => self.ensure_database_command(core, command).await,
            "_shoalDropCollection" => self.drop_collection(core, command).await,
            "_shoalDropDatabase" => self.drop_database(core, command).await,
            other => Err(CommandError::internal(format!(
                "unrouted metadata command {other}"
            ))),
        }
    }

    async fn list_shards(&self, core: &Arc<MemberCore>) -> Result<Document, CommandError> {
        let shards = store::find_all(core, coll::SHARDS, doc! {}).await?;
        Ok(doc! {"shards": shards, "ok": 1.0})
    }

    async fn add_shard(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let text = string_field(command, "addShard")?;
        let connection = ShardConnection::parse(text)?;
        if command.contains_key("maxSize") {
            return Err(CommandError::new(
                ErrorCode::INVALID_OPTIONS,
                "maxSize is no longer supported",
            ));
        }
        let id = match command.get("name") {
            Some(Bson::String(name)) => ShardId::new(name)?,
            Some(other) => return Err(CommandError::type_mismatch("name", "string", other)),
            None => ShardId::new(&connection.replset)?,
        };
        let existing = store::find_all(core, coll::SHARDS, doc! {}).await?;
        for shard in &existing {
            let same_id = shard.get_str("_id") == Ok(id.as_str());
            let same_host = shard.get_str("host") == Ok(connection.to_host_string().as_str());
            if same_id && same_host {
                return Ok(doc! {"shardAdded": id.as_str(), "ok": 1.0});
            }
            if same_id || same_host {
                return Err(CommandError::new(
                    ErrorCode::ILLEGAL_OPERATION,
                    format!("a shard named '{id}' or with host '{text}' already exists"),
                ));
            }
        }
        self.verify_shard(core, &connection).await?;
        failpoint::hit("addShard.beforeCommit");
        self.commit(
            core,
            vec![put(coll::SHARDS, catalog::shard_document(&id, &connection))],
        )
        .await?;
        tracing::info!(shard = %id, host = %connection.to_host_string(), "shard added");
        Ok(doc! {"shardAdded": id.as_str(), "ok": 1.0})
    }

    /// Checks that the first reachable host of a new shard is a shard member of the named set.
    async fn verify_shard(
        &self,
        core: &Arc<MemberCore>,
        connection: &ShardConnection,
    ) -> Result<(), CommandError> {
        let mut last_error = None;
        for host in &connection.hosts {
            let reply = match core
                .rpc
                .call(host, doc! {"hello": 1, "$db": "admin"}, SHARD_CALL_TIMEOUT)
                .await
            {
                Ok(reply) => reply,
                Err(error) => {
                    last_error = Some(CommandError::from(error));
                    continue;
                }
            };
            if reply.contains_key("configsvr") {
                return Err(CommandError::bad_value(format!(
                    "{host} is a config server member and cannot be added as a shard"
                )));
            }
            let set_name = reply.get_str("setName").unwrap_or("");
            if set_name != connection.replset {
                return Err(CommandError::new(
                    ErrorCode::OPERATION_FAILED,
                    format!(
                        "in seed list {}, host {host} does not belong to replica set {} (it reports '{set_name}')",
                        connection.to_host_string(),
                        connection.replset
                    ),
                ));
            }
            return Ok(());
        }
        let cause = last_error.map(|e| e.errmsg).unwrap_or_default();
        Err(CommandError::new(
            ErrorCode::OPERATION_FAILED,
            format!(
                "failed to reach shard {}: {cause}",
                connection.to_host_string()
            ),
        ))
    }

    async fn enable_sharding(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let db = string_field(command, "enableSharding")?;
        let requested = match command.get("primaryShard") {
            Some(Bson::String(shard)) => Some(ShardId::new(shard)?),
            Some(other) => {
                return Err(CommandError::type_mismatch("primaryShard", "string", other));
            }
            None => None,
        };
        let (primary, _) = self.ensure_database(core, db, requested.as_ref()).await?;
        if let Some(requested) = requested
            && requested != primary
        {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_EXISTS,
                format!("database {db} already exists with primary shard {primary}"),
            ));
        }
        Ok(doc! {"ok": 1.0})
    }

    async fn ensure_database_command(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let db = string_field(command, "_shoalEnsureDatabase")?;
        let (primary, created) = self.ensure_database(core, db, None).await?;
        Ok(doc! {"primary": primary.as_str(), "created": created, "ok": 1.0})
    }

    /// Returns the database's primary shard, creating the database entry if it is new.
    async fn ensure_database(
        &self,
        core: &Arc<MemberCore>,
        db: &str,
        requested_primary: Option<&ShardId>,
    ) -> Result<(ShardId, bool), CommandError> {
        ids::validate_db_name(db)?;
        if matches!(db, "admin" | "config" | "local") {
            return Err(CommandError::new(
                ErrorCode::INVALID_OPTIONS,
                format!("database '{db}' is internal and cannot hold user collections"),
            ));
        }
        if let Some(existing) = store::find_one(core, coll::DATABASES, db).await? {
            let primary = existing.get_str("primary").map_err(|_| {
                CommandError::internal(format!("config.databases entry for {db} has no primary"))
            })?;
            return Ok((ShardId::new(primary)?, false));
        }
        let databases = store::find_all(core, coll::DATABASES, doc! {}).await?;
        let same_but_case = databases
            .iter()
            .filter_map(|d| d.get_str("_id").ok())
            .find(|name| name.eq_ignore_ascii_case(db));
        if let Some(existing) = same_but_case {
            return Err(CommandError::new(
                ErrorCode::DATABASE_DIFFER_CASE,
                format!(
                    "db already exists with different case already have: [{existing}] trying to create [{db}]"
                ),
            ));
        }
        let shard_docs = store::find_all(core, coll::SHARDS, doc! {}).await?;
        let shards: Vec<ShardId> = shard_docs
            .iter()
            .filter_map(|s| s.get_str("_id").ok())
            .filter_map(|s| ShardId::new(s).ok())
            .collect();
        // A draining shard is on its way out: it never becomes a new database's primary.
        let accepting: Vec<ShardId> = shard_docs
            .iter()
            .filter(|s| !crate::drain::is_draining(s))
            .filter_map(|s| s.get_str("_id").ok())
            .filter_map(|s| ShardId::new(s).ok())
            .collect();
        let primary = match requested_primary {
            Some(requested) if shards.contains(requested) => requested.clone(),
            Some(requested) => {
                return Err(CommandError::new(
                    ErrorCode::SHARD_NOT_FOUND,
                    format!("Shard {requested} not found"),
                ));
            }
            None => {
                let primaries: Vec<ShardId> = databases
                    .iter()
                    .filter_map(|d| d.get_str("primary").ok())
                    .filter_map(|s| ShardId::new(s).ok())
                    .collect();
                catalog::choose_primary_shard(&accepting, &primaries).ok_or_else(|| {
                    CommandError::new(
                        ErrorCode::SHARD_NOT_FOUND,
                        format!(
                            "Database {db} could not be created :: caused by :: No shards found"
                        ),
                    )
                })?
            }
        };
        self.commit(
            core,
            vec![put(
                coll::DATABASES,
                catalog::database_document(db, &primary),
            )],
        )
        .await?;
        tracing::info!(db, primary = %primary, "database created");
        Ok((primary, true))
    }

    async fn shard_collection(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = Namespace::parse(string_field(command, "shardCollection")?)?;
        let key_doc = match command.get("key") {
            Some(Bson::Document(key)) => key,
            Some(other) => return Err(CommandError::type_mismatch("key", "object", other)),
            None => return Err(CommandError::bad_value("shardCollection needs a 'key'")),
        };
        let key = ShardKeyPattern::parse(key_doc)?;
        let unique = matches!(command.get("unique"), Some(Bson::Boolean(true)));
        if let Some(existing) = store::find_one(core, coll::COLLECTIONS, ns.to_string()).await? {
            if existing.get_document("key").ok() == Some(&key.to_document()) {
                return Ok(
                    doc! {"collectionsharded": ns.to_string(), "collectionUUID": existing.get("uuid").cloned().unwrap_or(Bson::Null), "ok": 1.0},
                );
            }
            return Err(CommandError::new(
                ErrorCode::ALREADY_INITIALIZED,
                format!("sharding already enabled for collection {ns} with a different key"),
            ));
        }
        let (primary, _) = self.ensure_database(core, &ns.db, None).await?;
        failpoint::hit("shardCollection.afterEnsureDatabase");
        self.require_key_index(core, &primary, &ns, &key).await?;
        self.create_on_shard(core, &primary, &ns, &key, unique)
            .await?;
        let uuid = CollectionUuid::random();
        let epoch = Epoch(ObjectId::new());
        let chunks = self
            .initial_chunks(core, command, &ns, &key, &primary, epoch)
            .await?;
        for shard in chunks.iter().map(|c| &c.shard).collect::<BTreeSet<_>>() {
            if *shard != primary {
                self.create_on_shard(core, shard, &ns, &key, unique).await?;
            }
        }
        let mut ops = vec![put(
            coll::COLLECTIONS,
            catalog::collection_document(&ns, uuid, epoch, &key, unique),
        )];
        for chunk in &chunks {
            ops.push(put(
                coll::CHUNKS,
                catalog::chunk_document(&catalog::new_chunk_id(), &ns, uuid, chunk),
            ));
        }
        self.commit(core, ops).await?;
        tracing::info!(ns = %ns, key = %key.to_document(), "collection sharded");
        let shards = self.all_shards(core).await?;
        self.sync_filtering(core, &ns, &shards).await?;
        Ok(doc! {"collectionsharded": ns.to_string(), "collectionUUID": uuid.to_bson(), "ok": 1.0})
    }

    /// The chunks a newly sharded collection starts with: for an empty collection on a hashed
    /// key, `numInitialChunks` (default two per shard) spread over every shard, as MongoDB does;
    /// otherwise one chunk on the primary shard, which holds any existing documents.
    async fn initial_chunks(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
        ns: &Namespace,
        key: &ShardKeyPattern,
        primary: &ShardId,
        epoch: Epoch,
    ) -> Result<Vec<Chunk>, CommandError> {
        let single = vec![Chunk {
            min: key.global_min(),
            max: key.global_max(),
            shard: primary.clone(),
            version: shoal_common::ChunkVersion::initial(epoch),
        }];
        if !key.is_hashed_prefix() {
            return Ok(single);
        }
        let host = self.shard_host(core, primary).await?;
        let count = doc! {"count": ns.coll.clone(), "$db": ns.db.clone()};
        let reply = shard_call(core, &host, count).await?;
        if let Some(error) = CommandError::from_reply(&reply) {
            return Err(error);
        }
        if !matches!(reply.get("n"), Some(Bson::Int32(0) | Bson::Int64(0))) {
            return Ok(single);
        }
        let mut shards: Vec<ShardId> = Vec::new();
        for shard in store::find_all(core, coll::SHARDS, doc! {}).await? {
            if let Ok(id) = shard.get_str("_id")
                && !crate::drain::is_draining(&shard)
            {
                shards.push(ShardId::new(id)?);
            }
        }
        shards.sort();
        // Start the deal at the primary so a one-shard cluster keeps everything there.
        if let Some(at) = shards.iter().position(|s| s == primary) {
            shards.rotate_left(at);
        }
        let wanted = match command.get("numInitialChunks") {
            None => 2 * shards.len(),
            Some(Bson::Int32(n)) if *n > 0 => *n as usize,
            Some(Bson::Int64(n)) if *n > 0 => *n as usize,
            Some(other) => {
                return Err(CommandError::bad_value(format!(
                    "numInitialChunks must be a positive number, not {other}"
                )));
            }
        };
        if wanted > INITIAL_CHUNKS_MAX {
            return Err(CommandError::bad_value(format!(
                "numInitialChunks cannot be more than {INITIAL_CHUNKS_MAX}"
            )));
        }
        Ok(key
            .hashed_initial_chunks(&shards, wanted, epoch)
            .unwrap_or(single))
    }

    /// MongoDB's rule for sharding a collection that already holds documents: an index must
    /// start with the shard key (an empty collection gets one made by `shardCollection`). Hashed
    /// keys are exempt: Shoal has no hashed indexes, and routing by hash needs none.
    async fn require_key_index(
        &self,
        core: &Arc<MemberCore>,
        primary: &ShardId,
        ns: &Namespace,
        key: &ShardKeyPattern,
    ) -> Result<(), CommandError> {
        if key.is_hashed() {
            return Ok(());
        }
        let host = self.shard_host(core, primary).await?;
        let count = doc! {"count": ns.coll.clone(), "$db": ns.db.clone()};
        let reply = shard_call(core, &host, count).await?;
        if matches!(reply.get("n"), Some(Bson::Int32(0) | Bson::Int64(0)) | None) {
            return Ok(());
        }
        let list = doc! {"listIndexes": ns.coll.clone(), "$db": ns.db.clone()};
        let reply = shard_call(core, &host, list).await?;
        let indexes = reply
            .get_document("cursor")
            .and_then(|cursor| cursor.get_array("firstBatch"))
            .map(|batch| batch.to_vec())
            .unwrap_or_default();
        let wanted: Vec<&str> = key.fields.iter().map(|(field, _)| field.as_str()).collect();
        let supported = indexes.iter().filter_map(Bson::as_document).any(|index| {
            index.get_document("key").is_ok_and(|fields| {
                let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                names.starts_with(&wanted)
                    && fields.values().take(wanted.len()).all(|dir| {
                        matches!(dir, Bson::Int32(1) | Bson::Int64(1)) || *dir == Bson::Double(1.0)
                    })
            })
        });
        if supported || wanted == ["_id"] {
            return Ok(());
        }
        Err(CommandError::new(
            ErrorCode::INVALID_OPTIONS,
            format!(
                "Please create an index that starts with the proposed shard key before sharding \
                 the collection {ns} (key {})",
                key.to_document()
            ),
        ))
    }

    /// Creates the collection and its shard-key index on its primary shard, as MongoDB does at
    /// `shardCollection`, so it is listed and indexed even before documents arrive. An existing
    /// collection or index is fine. Hashed keys get no index yet: hashed indexes do not exist.
    async fn create_on_shard(
        &self,
        core: &Arc<MemberCore>,
        shard: &ShardId,
        ns: &Namespace,
        key: &ShardKeyPattern,
        unique: bool,
    ) -> Result<(), CommandError> {
        let host = self.shard_host(core, shard).await?;
        let mut requests = vec![doc! {"create": ns.coll.clone(), "$db": ns.db.clone()}];
        if !key.is_hashed() {
            let mut index = doc! {"key": key.to_document(), "name": index_name(key)};
            if unique {
                index.insert("unique", true);
            }
            requests.push(
                doc! {"createIndexes": ns.coll.clone(), "indexes": [index], "$db": ns.db.clone()},
            );
        }
        for request in requests {
            let reply = shard_call(core, &host, request).await?;
            match CommandError::from_reply(&reply) {
                Some(error) if error.code != ErrorCode::NAMESPACE_EXISTS => return Err(error),
                _ => {}
            }
        }
        Ok(())
    }

    pub(crate) async fn load_collection(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
    ) -> Result<ShardedCollection, CommandError> {
        let Some(collection) = store::find_one(core, coll::COLLECTIONS, ns.to_string()).await?
        else {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_NOT_SHARDED,
                format!("collection {ns} is not sharded"),
            ));
        };
        let uuid = collection.get("uuid").cloned().unwrap_or(Bson::Null);
        let chunks = store::find_all(core, coll::CHUNKS, doc! {"uuid": uuid}).await?;
        ShardedCollection::from_documents(&collection, &chunks)
    }

    async fn split(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = Namespace::parse(string_field(command, "split")?)?;
        let collection = self.load_collection(core, &ns).await?;
        let middle = match command.get("middle") {
            Some(Bson::Document(middle)) => middle.clone(),
            Some(other) => return Err(CommandError::type_mismatch("middle", "object", other)),
            None if command.contains_key("find") || command.contains_key("bounds") => {
                self.median_of_chunk(core, &ns, &collection, command)
                    .await?
            }
            None => {
                return Err(CommandError::bad_value(
                    "split needs 'middle', 'find' or 'bounds'",
                ));
            }
        };
        self.split_at(core, &ns, collection, &middle).await?;
        Ok(doc! {"ok": 1.0})
    }

    /// Splits the chunk of `collection` containing `middle` there and commits (the caller holds
    /// the metadata lock and loaded `collection` under it).
    pub(crate) async fn split_at(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        mut collection: ShardedCollection,
        middle: &Document,
    ) -> Result<(), CommandError> {
        let index = collection.map.chunk_index_for_key(middle);
        collection.map.split_at(middle)?;
        let lower = &collection.map.chunks[index];
        let upper = &collection.map.chunks[index + 1];
        let ops = vec![
            put(
                coll::CHUNKS,
                catalog::chunk_document(&collection.chunk_ids[index], ns, collection.uuid, lower),
            ),
            put(
                coll::CHUNKS,
                catalog::chunk_document(&catalog::new_chunk_id(), ns, collection.uuid, upper),
            ),
        ];
        failpoint::hit("split.beforeCommit");
        self.commit(core, ops).await?;
        tracing::info!(ns = %ns, at = %middle, "chunk split");
        Ok(())
    }

    /// The split point of `split` by `find` (the chunk holding that shard key) or `bounds` (the
    /// chunk with exactly those bounds): the median shard key of its documents, from its shard.
    pub(crate) async fn median_of_chunk(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        collection: &ShardedCollection,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let key = chunk_key_from_command(&collection.map, command)?;
        let chunk = &collection.map.chunks[collection.map.chunk_index_for_key(&key)];
        if let Ok(bounds) = command.get_array("bounds") {
            let max = bounds.get(1).and_then(Bson::as_document);
            if chunk.min != key || max != Some(&chunk.max) {
                return Err(CommandError::bad_value(format!(
                    "bounds {bounds:?} are not the bounds of a chunk (the chunk there is [{}, {}))",
                    chunk.min, chunk.max
                )));
            }
        }
        let host = self.shard_host(core, &chunk.shard).await?;
        let request = doc! {
            "_shoalSplitPoint": ns.to_string(), "$db": "admin",
            "keyPattern": collection.map.key.to_document(),
            "min": chunk.min.clone(), "max": chunk.max.clone(),
        };
        let reply = shard_call(core, &host, request).await?;
        if let Some(error) = CommandError::from_reply(&reply) {
            return Err(error);
        }
        match reply.get("splitPoint") {
            Some(Bson::Document(point)) => Ok(point.clone()),
            _ => Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                format!(
                    "chunk [{}, {}) holds fewer than two distinct shard keys and cannot be split",
                    chunk.min, chunk.max
                ),
            )),
        }
    }

    /// `configureCollectionBalancing: ns, chunkSize: <MB>`: the collection's own maximum chunk
    /// size (`maxChunkSizeBytes` in `config.collections`); 0 returns to the cluster's.
    async fn configure_balancing(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = Namespace::parse(string_field(command, "configureCollectionBalancing")?)?;
        let Some(mut collection) = store::find_one(core, coll::COLLECTIONS, ns.to_string()).await?
        else {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_NOT_SHARDED,
                format!("{ns} is not sharded"),
            ));
        };
        match command.get("chunkSize") {
            None => {}
            Some(Bson::Int32(0) | Bson::Int64(0)) => {
                collection.remove("maxChunkSizeBytes");
            }
            Some(Bson::Int32(mb @ 1..=1024)) => {
                collection.insert("maxChunkSizeBytes", i64::from(*mb) << 20);
            }
            Some(Bson::Int64(mb @ 1..=1024)) => {
                collection.insert("maxChunkSizeBytes", *mb << 20);
            }
            Some(other) => {
                return Err(CommandError::bad_value(format!(
                    "chunkSize must be a number of MB from 1 to 1024 (0 for the cluster's), not {other}"
                )));
            }
        }
        // `enableBalancing: false` is `noBalance: true`, the flag `sh.disableBalancing` sets.
        match command.get("enableBalancing") {
            None => {}
            Some(Bson::Boolean(true)) => {
                collection.remove("noBalance");
            }
            Some(Bson::Boolean(false)) => {
                collection.insert("noBalance", true);
            }
            Some(other) => {
                return Err(CommandError::type_mismatch(
                    "enableBalancing",
                    "bool",
                    other,
                ));
            }
        }
        self.commit(core, vec![put(coll::COLLECTIONS, collection)])
            .await?;
        Ok(doc! {"ok": 1.0})
    }

    /// `mergeChunks: ns, bounds: [min, max]`: merges the adjacent chunks of one shard that
    /// exactly cover the bounds into one. Metadata only: the documents already sit together.
    async fn merge_chunks(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = Namespace::parse(string_field(command, "mergeChunks")?)?;
        let bounds = match command.get("bounds") {
            Some(Bson::Array(bounds)) => bounds,
            Some(other) => return Err(CommandError::type_mismatch("bounds", "array", other)),
            None => return Err(CommandError::missing_field("mergeChunks", "bounds")),
        };
        let (Some(Bson::Document(min)), Some(Bson::Document(max)), 2) =
            (bounds.first(), bounds.get(1), bounds.len())
        else {
            return Err(CommandError::bad_value(
                "mergeChunks bounds must be [minKey, maxKey] documents",
            ));
        };
        let mut collection = self.load_collection(core, &ns).await?;
        let range = collection.map.merge(min, max)?;
        let merged = &collection.map.chunks[range.start];
        let mut ops = vec![put(
            coll::CHUNKS,
            catalog::chunk_document(
                &collection.chunk_ids[range.start],
                &ns,
                collection.uuid,
                merged,
            ),
        )];
        for id in &collection.chunk_ids[range.start + 1..range.end] {
            ops.push(AtomicOp::Delete {
                coll: coll::CHUNKS.into(),
                id: id.clone(),
            });
        }
        failpoint::hit("mergeChunks.beforeCommit");
        self.commit(core, ops).await?;
        tracing::info!(ns = %ns, min = %min, max = %max, merged = range.len(), "chunks merged");
        Ok(doc! {"ok": 1.0})
    }

    pub(crate) async fn shard_host(
        &self,
        core: &Arc<MemberCore>,
        shard: &ShardId,
    ) -> Result<String, CommandError> {
        let Some(shard_doc) = store::find_one(core, coll::SHARDS, shard.as_str()).await? else {
            return Err(CommandError::new(
                ErrorCode::SHARD_NOT_FOUND,
                format!("Shard {shard} not found"),
            ));
        };
        let host = shard_doc
            .get_str("host")
            .map_err(|_| CommandError::internal("shard without host"))?;
        // Checked, then used whole: the topology finds the set's primary.
        ShardConnection::parse(host)?;
        Ok(host.to_owned())
    }

    async fn drop_collection(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = Namespace::parse(string_field(command, "_shoalDropCollection")?)?;
        let Some(collection) = store::find_one(core, coll::COLLECTIONS, ns.to_string()).await?
        else {
            return Ok(doc! {"dropped": false, "ok": 1.0});
        };
        let uuid = collection.get("uuid").cloned().unwrap_or(Bson::Null);
        let mut ops = vec![AtomicOp::Delete {
            coll: coll::COLLECTIONS.into(),
            id: ns.to_string().into(),
        }];
        for chunk in store::find_all(core, coll::CHUNKS, doc! {"uuid": uuid}).await? {
            if let Some(id) = chunk.get("_id") {
                ops.push(AtomicOp::Delete {
                    coll: coll::CHUNKS.into(),
                    id: id.clone(),
                });
            }
        }
        self.commit(core, ops).await?;
        Ok(doc! {"dropped": true, "ok": 1.0})
    }

    async fn drop_database(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let db = string_field(command, "_shoalDropDatabase")?;
        let mut ops = vec![AtomicOp::Delete {
            coll: coll::DATABASES.into(),
            id: db.into(),
        }];
        let prefix = format!("^{}\\.", regex_escape(db));
        let filter = doc! {"_id": {"$regex": prefix}};
        for collection in store::find_all(core, coll::COLLECTIONS, filter).await? {
            let uuid = collection.get("uuid").cloned().unwrap_or(Bson::Null);
            for chunk in store::find_all(core, coll::CHUNKS, doc! {"uuid": uuid}).await? {
                if let Some(id) = chunk.get("_id") {
                    ops.push(AtomicOp::Delete {
                        coll: coll::CHUNKS.into(),
                        id: id.clone(),
                    });
                }
            }
            if let Some(id) = collection.get("_id") {
                ops.push(AtomicOp::Delete {
                    coll: coll::COLLECTIONS.into(),
                    id: id.clone(),
                });
            }
        }
        self.commit(core, ops).await?;
        Ok(doc! {"dropped": db, "ok": 1.0})
    }

    async fn routing_table(
        &self,
        core: &Arc<MemberCore>,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let if_newer_than = match command.get("ifNewerThan") {
            Some(Bson::Int64(v)) => *v,
            Some(Bson::Int32(v)) => i64::from(*v),
            _ => -1,
        };
        let version = self.routing_version(core).await?;
        if let Some(ns) = command.get("ns") {
            let Bson::String(ns) = ns else {
                return Err(CommandError::type_mismatch("ns", "string", ns));
            };
            return self
                .routing_table_of(core, &Namespace::parse(ns)?, version)
                .await;
        }
        if version <= if_newer_than {
            return Ok(doc! {"version": version, "changed": false, "ok": 1.0});
        }
        Ok(doc! {
            "version": version,
            "changed": true,
            "shards": store::find_all(core, coll::SHARDS, doc! {}).await?,
            "databases": store::find_all(core, coll::DATABASES, doc! {}).await?,
            "collections": store::find_all(core, coll::COLLECTIONS, doc! {}).await?,
            "chunks": store::find_all(core, coll::CHUNKS, doc! {}).await?,
            "ok": 1.0,
        })
    }

    /// The routing table restricted to one namespace (every shard, its database, and its
    /// collection with its chunks when sharded), always answered: a router asks after a shard
    /// refused its version, whatever the global routing version says. `version` is the global
    /// version read before the documents, so a router never takes this reply for newer than
    /// it is.
    async fn routing_table_of(
        &self,
        core: &Arc<MemberCore>,
        ns: &Namespace,
        version: i64,
    ) -> Result<Document, CommandError> {
        let collections =
            store::find_all(core, coll::COLLECTIONS, doc! {"_id": ns.to_string()}).await?;
        let mut chunks = Vec::new();
        for uuid in collections.iter().filter_map(|c| c.get("uuid")) {
            chunks.extend(store::find_all(core, coll::CHUNKS, doc! {"uuid": uuid.clone()}).await?);
        }
        Ok(doc! {
            "version": version,
            "changed": true,
            "ns": ns.to_string(),
            "shards": store::find_all(core, coll::SHARDS, doc! {}).await?,
            "databases": store::find_all(core, coll::DATABASES, doc! {"_id": ns.db.clone()}).await?,
            "collections": collections,
            "chunks": chunks,
            "ok": 1.0,
        })
    }

    async fn routing_version(&self, core: &Arc<MemberCore>) -> Result<i64, CommandError> {
        let routing = store::find_one(core, coll::SHOAL_METADATA, "routing").await?;
        Ok(routing.and_then(|d| d.get_i64("version").ok()).unwrap_or(0))
    }

    /// Writes `ops` and the bumped routing version in one atomic batch.
    pub(crate) async fn commit(
        &self,
        core: &Arc<MemberCore>,
        mut ops: Vec<AtomicOp>,
    ) -> Result<(), CommandError> {
        let version = self.routing_version(core).await?;
        ops.push(put(
            coll::SHOAL_METADATA,
            doc! {"_id": "routing", "version": version + 1},
        ));
        store::apply(core, ops).await
    }
}

/// MongoDB's default index name: `field_1` parts joined by `_`.
fn index_name(key: &ShardKeyPattern) -> String {
    let parts: Vec<String> = key
        .fields
        .iter()
        .map(|(field, _)| format!("{field}_1"))
        .collect();
    parts.join("_")
}

pub(crate) fn put(coll: &str, doc: Document) -> AtomicOp {
    AtomicOp::Put {
        coll: coll.to_owned(),
        doc,
    }
}

pub(crate) fn string_field<'a>(
    command: &'a Document,
    field: &str,
) -> Result<&'a str, CommandError> {
    match command.get(field) {
        Some(Bson::String(value)) => Ok(value),
        Some(other) => Err(CommandError::type_mismatch(field, "string", other)),
        None => Err(CommandError::bad_value(format!(
            "missing required field '{field}'"
        ))),
    }
}

/// The shard-key value naming a chunk in `moveChunk`: `find` (a query on the shard key) or
/// `bounds` (`[min, max]`, whose `min` names the chunk).
pub(crate) fn chunk_key_from_command(
    map: &ChunkMap,
    command: &Document,
) -> Result<Document, CommandError> {
    if let Some(find) = command.get("find") {
        let find = find
            .as_document()
            .ok_or_else(|| CommandError::type_mismatch("find", "object", find))?;
        // `find` is an equality on the whole shard key naming one chunk; dotted key fields are
        // read as flat names, as in a query.
        return match map.equality_keys(find) {
            Some(mut keys) if keys.len() == 1 => Ok(keys.remove(0)),
            _ => Err(CommandError::new(
                ErrorCode::SHARD_KEY_NOT_FOUND,
                format!(
                    "no chunk found for {find}: 'find' must give every field of the shard key {} by equality",
                    map.key.to_document()
                ),
            )),
        };
    }
    let first_bound = command
        .get_array("bounds")
        .ok()
        .and_then(|bounds| bounds.first());
    if let Some(Bson::Document(min)) = first_bound {
        map.key.validate_key_shape(min)?;
        return Ok(min.clone());
    }
    Err(CommandError::bad_value(
        "moveChunk needs 'find' or 'bounds'",
    ))
}

fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        if "\\^$.|?*+()[]{}".contains(ch) {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}

/// Sends `request` (which names its `$db`) to the primary of the shard at `target`, following
/// its elections.
pub(crate) async fn shard_call(
    core: &Arc<MemberCore>,
    target: &str,
    mut request: Document,
) -> Result<Document, CommandError> {
    let db = match request.remove("$db") {
        Some(Bson::String(db)) => db,
        _ => "admin".to_owned(),
    };
    let (_, reply) = core
        .topology
        .call(
            target,
            &db,
            request,
            shoal_repl::ReadPreference::PRIMARY,
            SHARD_CALL_TIMEOUT,
        )
        .await?;
    Ok(reply)
}
