//! The router's I/O to the rest of the cluster: calls to the config server and to shards over
//! QUIC (through the replica-set [`Topology`], which finds each set's primary, picks members by
//! read preference and retries across failovers), and the routing cache refresh. The cache is
//! refreshed in the background every [`ROUTING_REFRESH_INTERVAL`] (`--routing-refresh-ms`), at
//! once after this router changes metadata, and for one namespace after a shard refuses a
//! request as stale, so the config server stays off the request path.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode, Namespace, ShardId};
use shoal_repl::{ReadPreference, Topology};
use shoal_rpc::RpcClient;

use crate::{commands::stale::StaleInfo, topology::RoutingCache};

tokio::task_local! {
    /// The client command's `$readPreference`, for the shard reads made on its behalf.
    pub static READ_PREFERENCE: ReadPreference;
}

/// Commands a secondary may answer (when the client's read preference allows it).
const SECONDARY_READS: &[&str] = &[
    "find",
    "aggregate",
    "count",
    "distinct",
    "listCollections",
    "listIndexes",
    "collStats",
    "dbHash",
    "dataSize",
    "explain",
    "_shoalCountRange",
];

/// The read preference for `command` sent on behalf of the current client command: writes,
/// and aggregations that write, always go to the primary.
fn preference_for(command: &Document) -> ReadPreference {
    let name = command.keys().next().map_or("", String::as_str);
    if !SECONDARY_READS.contains(&name) {
        return ReadPreference::PRIMARY;
    }
    if name == "aggregate"
        && command.get_array("pipeline").is_ok_and(|stages| {
            stages.iter().any(|stage| {
                stage
                    .as_document()
                    .is_some_and(|s| s.contains_key("$out") || s.contains_key("$merge"))
            })
        })
    {
        return ReadPreference::PRIMARY;
    }
    READ_PREFERENCE
        .try_with(|preference| *preference)
        .unwrap_or(ReadPreference::PRIMARY)
}

/// How often the background task asks the config server whether routing metadata changed, by
/// default.
pub const ROUTING_REFRESH_INTERVAL: Duration = Duration::from_millis(1000);
/// How long one call to a shard may take before the router gives up on it.
pub const SHARD_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one call to the config server may take.
pub const CONFIG_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Parses `--configdb NAME/HOST:PORT[,HOST:PORT...]` into the member addresses (checking the
/// form; the whole string is the config server's target).
pub fn parse_configdb(configdb: &str) -> Result<Vec<String>, CommandError> {
    let Some((name, hosts)) = configdb.split_once('/') else {
        return Err(CommandError::bad_value(format!(
            "--configdb '{configdb}' must look like NAME/HOST:PORT[,HOST:PORT...]"
        )));
    };
    let hosts: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    if name.is_empty() || hosts.is_empty() {
        return Err(CommandError::bad_value(format!(
            "--configdb '{configdb}' names no hosts"
        )));
    }
    Ok(hosts)
}

/// Connections to the config server and the shards, and the routing cache.
pub struct Cluster {
    topology: Topology,
    config_target: String,
    cache: RwLock<Arc<RoutingCache>>,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// A cluster client with an empty cache.
    pub fn new(rpc: RpcClient, configdb: &str) -> Cluster {
        Cluster {
            topology: Topology::new(rpc),
            config_target: configdb.to_owned(),
            cache: RwLock::new(Arc::new(RoutingCache::default())),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `command` to database `db` on `target` (a replica-set connection string or one
    /// member's `host:port`); returns the reply whether `ok` is 1 or 0.
    pub async fn call(
        &self,
        target: &str,
        db: &str,
        command: Document,
    ) -> Result<Document, CommandError> {
        Ok(self.call_routed(target, db, command).await?.1)
    }

    /// Like [`Cluster::call`], and also names the member that answered (a cursor's `getMore`
    /// must go back to it).
    pub async fn call_routed(
        &self,
        target: &str,
        db: &str,
        command: Document,
    ) -> Result<(String, Document), CommandError> {
        let preference = preference_for(&command);
        self.topology
            .call(target, db, command, preference, SHARD_CALL_TIMEOUT)
            .await
    }

    /// Like [`Cluster::call`], but an `ok: 0` reply becomes an error.
    pub async fn call_ok(
        &self,
        host: &str,
        db: &str,
        command: Document,
    ) -> Result<Document, CommandError> {
        let reply = self.call(host, db, command).await?;
        match CommandError::from_reply(&reply) {
            Some(error) => Err(error),
            None => Ok(reply),
        }
    }

    /// The config server's target (its replica-set connection string).
    pub fn config_host(&self) -> &str {
        &self.config_target
    }

    /// The replica-set topology (for `hello`-level views of shards).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Sends a command to the config server's primary, following its elections.
    pub async fn call_config(&self, db: &str, command: Document) -> Result<Document, CommandError> {
        self.call_config_timeout(db, command, CONFIG_CALL_TIMEOUT)
            .await
    }

    /// Like [`Cluster::call_config`], for commands that may take longer than
    /// [`CONFIG_CALL_TIMEOUT`] (`movePrimary` copies data).
    pub async fn call_config_timeout(
        &self,
        db: &str,
        command: Document,
        timeout: Duration,
    ) -> Result<Document, CommandError> {
        let (_, reply) = self
            .topology
            .call(
                &self.config_target,
                db,
                command,
                ReadPreference::PRIMARY,
                timeout,
            )
            .await?;
        Ok(reply)
    }

    /// The current routing snapshot, loading it first if this router has none yet.
    pub async fn routing(&self) -> Result<Arc<RoutingCache>, CommandError> {
        let current = self.snapshot();
        if current.version > 0 {
            return Ok(current);
        }
        self.refresh().await
    }

    fn snapshot(&self) -> Arc<RoutingCache> {
        match self.cache.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Fetches routing metadata newer than the cached version, if any, and installs it.
    pub async fn refresh(&self) -> Result<Arc<RoutingCache>, CommandError> {
        let _guard = self.refresh_lock.lock().await;
        let current = self.snapshot();
        let reply = self
            .call_config(
                "admin",
                doc! {"_shoalGetRoutingTable": 1, "ifNewerThan": current.version},
            )
            .await?;
        if let Some(error) = CommandError::from_reply(&reply) {
            return Err(error);
        }
        if !matches!(reply.get("changed"), Some(Bson::Boolean(true))) {
            return Ok(current);
        }
        let fresh = Arc::new(RoutingCache::from_table(&reply)?);
        self.install(Arc::clone(&fresh));
        tracing::debug!(version = fresh.version, "routing cache refreshed");
        Ok(fresh)
    }

    fn install(&self, fresh: Arc<RoutingCache>) {
        match self.cache.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// After a shard refused a request on `ns` with StaleConfig (`error`): fetches `ns`'s
    /// routing from the config server whatever the global routing version says, installs it,
    /// and when the shard turns out to be behind the config server (not this router), asks the
    /// config server to push the shard its metadata again. Returns the fresh snapshot.
    pub async fn refresh_after_stale(
        &self,
        ns: &Namespace,
        error: &CommandError,
    ) -> Result<Arc<RoutingCache>, CommandError> {
        let fresh = self.refresh_namespace(ns).await?;
        let fresh_epoch = fresh.collection(ns).map(|collection| collection.epoch);
        if StaleInfo::of(error).shard_is_behind(fresh_epoch) {
            self.sync_shard_filtering(ns).await?;
        }
        Ok(fresh)
    }

    /// Fetches the routing of `ns` alone and merges it into the cached snapshot.
    async fn refresh_namespace(&self, ns: &Namespace) -> Result<Arc<RoutingCache>, CommandError> {
        let _guard = self.refresh_lock.lock().await;
        let reply = self
            .call_config(
                "admin",
                doc! {"_shoalGetRoutingTable": 1, "ns": ns.to_string()},
            )
            .await?;
        if let Some(error) = CommandError::from_reply(&reply) {
            return Err(error);
        }
        let fresh = RoutingCache::from_table(&reply)?;
        let merged = Arc::new(self.snapshot().with_namespace_from(&fresh, ns));
        self.install(Arc::clone(&merged));
        tracing::debug!(ns = %ns, "routing of one namespace refreshed after StaleConfig");
        Ok(merged)
    }

    /// Asks the config server to push every shard its metadata for `ns` again. A config server
    /// without the command leaves the shards to their own refresh.
    async fn sync_shard_filtering(&self, ns: &Namespace) -> Result<(), CommandError> {
        let reply = self
            .call_config("admin", doc! {"_shoalSyncShardFiltering": ns.to_string()})
            .await?;
        match CommandError::from_reply(&reply) {
            Some(error) if error.code == ErrorCode::COMMAND_NOT_FOUND => Ok(()),
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Asks the config server for the database's primary shard, creating the database if it is
    /// new, and returns the refreshed routing snapshot.
    pub async fn ensure_database(
        &self,
        db: &str,
    ) -> Result<(ShardId, Arc<RoutingCache>), CommandError> {
        let routing = self.routing().await?;
        if let Some(info) = routing.databases.get(db) {
            return Ok((info.primary.clone(), routing));
        }
        let reply = self
            .call_config("admin", doc! {"_shoalEnsureDatabase": db})
            .await?;
        if let Some(error) = CommandError::from_reply(&reply) {
            return Err(error);
        }
        let primary = ShardId::new(reply.get_str("primary").map_err(|_| {
            CommandError::new(
                ErrorCode::INTERNAL_ERROR,
                "_shoalEnsureDatabase reply without primary",
            )
        })?)?;
        let routing = self.refresh().await?;
        Ok((primary, routing))
    }
}

/// How often a router looks for shard-key moves another router left unfinished.
pub const KEY_MOVE_RECOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// How often a router records itself in `config.mongos` (read by `sh.status()`).
pub const ROUTER_PING_INTERVAL: Duration = Duration::from_secs(30);

/// Records this router in `config.mongos`, as mongos does, so `sh.status()` lists it.
async fn ping_config(
    cluster: &Cluster,
    host: &str,
    started: std::time::Instant,
) -> Result<(), CommandError> {
    let uptime = i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX);
    let update = doc! {
        "$set": {
            "ping": bson::DateTime::now(), "up": uptime, "waiting": true,
            "mongoVersion": shoal_node::info::MONGODB_VERSION, "advisoryHostFQDNs": [],
        },
    };
    let command = doc! {
        "update": "mongos",
        "updates": [{"q": {"_id": host}, "u": update, "upsert": true}],
    };
    let reply = cluster.call_config("config", command).await?;
    match CommandError::from_reply(&reply) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Refreshes the routing cache every `refresh_interval` (never when `None`: the cache then only
/// changes after this router's own metadata changes and StaleConfig refusals) until the task is
/// aborted, finishes interrupted shard-key moves, and records the router in `config.mongos`
/// every [`ROUTER_PING_INTERVAL`]. Failures are logged once per outage, not once per attempt.
pub async fn refresh_loop(cluster: Arc<Cluster>, host: String, refresh_interval: Option<Duration>) {
    let started = std::time::Instant::now();
    let mut last_ping: Option<std::time::Instant> = None;
    let mut last_recovery = std::time::Instant::now();
    let mut failing = false;
    loop {
        if last_recovery.elapsed() >= KEY_MOVE_RECOVERY_INTERVAL {
            last_recovery = std::time::Instant::now();
            match crate::commands::key_move::recover_key_moves(&cluster).await {
                Ok(0) => {}
                Ok(finished) => tracing::info!(finished, "finished interrupted shard-key moves"),
                Err(error) => tracing::debug!(error = %error, "key-move recovery pass failed"),
            }
        }
        if last_ping.is_none_or(|at| at.elapsed() >= ROUTER_PING_INTERVAL) {
            // A missed ping only makes `sh.status()` show the router as less recently active.
            if ping_config(&cluster, &host, started).await.is_ok() {
                last_ping = Some(std::time::Instant::now());
            }
        }
        let Some(interval) = refresh_interval else {
            tokio::time::sleep(ROUTING_REFRESH_INTERVAL).await;
            continue;
        };
        match cluster.refresh().await {
            Ok(_) if failing => {
                tracing::info!("config server reachable again");
                failing = false;
            }
            Ok(_) => {}
            Err(error) if !failing => {
                tracing::warn!(error = %error, "cannot refresh routing metadata from the config server");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(interval).await;
    }
}

/// The background refresh interval for `--routing-refresh-ms`: `None` (never) for 0.
pub fn refresh_interval_from_ms(refresh_ms: u64) -> Option<Duration> {
    (refresh_ms > 0).then(|| Duration::from_millis(refresh_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_configdb() {
        assert_eq!(
            parse_configdb("cfg/127.0.0.1:1,127.0.0.1:2").unwrap().len(),
            2
        );
        assert!(parse_configdb("127.0.0.1:1").is_err());
        assert!(parse_configdb("cfg/").is_err());
    }

    #[test]
    fn zero_disables_the_background_refresh() {
        assert_eq!(refresh_interval_from_ms(0), None);
        assert_eq!(
            refresh_interval_from_ms(250),
            Some(Duration::from_millis(250))
        );
    }
}
