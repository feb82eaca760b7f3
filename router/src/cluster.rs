//! The router's I/O to the rest of the cluster: calls to the config server and to shards over
//! QUIC, and the routing cache refresh. The cache is refreshed in the background every
//! [`ROUTING_REFRESH_INTERVAL`], and at once after this router changes metadata, so the config
//! server stays off the request path.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode, ShardId};
use shoal_rpc::RpcClient;

use crate::topology::RoutingCache;

/// How often the background task asks the config server whether routing metadata changed.
pub const ROUTING_REFRESH_INTERVAL: Duration = Duration::from_millis(1000);
/// How long one call to a shard may take before the router gives up on it.
pub const SHARD_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one call to the config server may take.
pub const CONFIG_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Parses `--configdb NAME/HOST:PORT[,HOST:PORT...]` into the member addresses.
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
    rpc: RpcClient,
    config_hosts: Vec<String>,
    cache: RwLock<Arc<RoutingCache>>,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// A cluster client with an empty cache.
    pub fn new(rpc: RpcClient, config_hosts: Vec<String>) -> Cluster {
        Cluster {
            rpc,
            config_hosts,
            cache: RwLock::new(Arc::new(RoutingCache::default())),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `command` to database `db` on `host`; returns the reply whether `ok` is 1 or 0.
    pub async fn call(
        &self,
        host: &str,
        db: &str,
        mut command: Document,
    ) -> Result<Document, CommandError> {
        command.insert("$db", db);
        let timeout = SHARD_CALL_TIMEOUT;
        self.rpc
            .call(host, command, timeout)
            .await
            .map_err(CommandError::from)
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

    /// The config server address requests go to.
    pub fn config_host(&self) -> &str {
        // parse_configdb guarantees at least one host.
        self.config_hosts.first().map(String::as_str).unwrap_or("")
    }

    /// Sends a command to the config server, trying each member in turn.
    pub async fn call_config(&self, db: &str, command: Document) -> Result<Document, CommandError> {
        let mut last_error = None;
        for host in &self.config_hosts {
            let mut request = command.clone();
            request.insert("$db", db);
            match self.rpc.call(host, request, CONFIG_CALL_TIMEOUT).await {
                Ok(reply) => return Ok(reply),
                Err(error) => last_error = Some(CommandError::from(error)),
            }
        }
        Err(last_error.unwrap_or_else(|| CommandError::internal("no config server hosts")))
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
        match self.cache.write() {
            Ok(mut guard) => *guard = Arc::clone(&fresh),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&fresh),
        }
        tracing::debug!(version = fresh.version, "routing cache refreshed");
        Ok(fresh)
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

/// Refreshes the routing cache forever (until the task is aborted), and records the router in
/// `config.mongos` every [`ROUTER_PING_INTERVAL`]. Failures are logged once per outage, not
/// once per attempt.
pub async fn refresh_loop(cluster: Arc<Cluster>, host: String) {
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
        tokio::time::sleep(ROUTING_REFRESH_INTERVAL).await;
    }
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
}
