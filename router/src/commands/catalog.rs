//! Catalog commands through the router: `listDatabases` and `listCollections` (the union over
//! the shards and, for `config`, the config server), `listIndexes`, `create`, `drop`,
//! `dropDatabase` and `dbStats`. Dropping a sharded collection or a database removes the data
//! on every shard first and the metadata last, so a failure in between leaves metadata that
//! still names the remains and the drop can be retried.

use std::collections::BTreeMap;

use bson::{Bson, Document, doc};
use futures::future::join_all;
use shoal_common::{CommandError, ErrorCode};
use shoal_query::Filter;

use super::{Placement, Router, command_namespace, document_field, int_field, shard_command};
use crate::cursors::Cursor;

impl Router {
    /// The addresses of every shard and of the config server.
    async fn all_hosts(&self, with_config: bool) -> Result<Vec<String>, CommandError> {
        let routing = self.cluster.routing().await?;
        let mut hosts = Vec::new();
        for shard in routing.shard_ids() {
            hosts.push(routing.shard_host(&shard)?.to_owned());
        }
        if with_config {
            hosts.push(self.cluster.config_host().to_owned());
        }
        Ok(hosts)
    }

    pub(super) async fn list_databases(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        if db != "admin" {
            return Err(CommandError::admin_only("listDatabases"));
        }
        let filter = document_field(command, "filter")?
            .map(Filter::parse)
            .transpose()
            .map_err(CommandError::from)?;
        let name_only = matches!(command.get("nameOnly"), Some(Bson::Boolean(true)));
        let hosts = self.all_hosts(true).await?;
        let request = doc! {"listDatabases": 1};
        let calls = hosts
            .iter()
            .map(|host| self.cluster.call_ok(host, "admin", request.clone()));
        let mut sizes: BTreeMap<String, i64> = BTreeMap::new();
        for reply in join_all(calls).await {
            for entry in reply?
                .get_array("databases")
                .into_iter()
                .flatten()
                .filter_map(Bson::as_document)
            {
                let Ok(name) = entry.get_str("name") else {
                    continue;
                };
                if name == "local" || name == "admin" {
                    continue;
                }
                *sizes.entry(name.to_owned()).or_default() += int_field(entry, "sizeOnDisk");
            }
        }
        sizes.entry("admin".to_owned()).or_default();
        let mut databases = Vec::new();
        let mut total = 0;
        for (name, size) in sizes {
            let entry = if name_only {
                doc! {"name": name}
            } else {
                doc! {"name": name, "sizeOnDisk": size, "empty": size == 0}
            };
            if filter
                .as_ref()
                .is_some_and(|filter| !filter.matches(&entry))
            {
                continue;
            }
            total += size;
            databases.push(Bson::Document(entry));
        }
        let mut reply = doc! {"databases": databases};
        if !name_only {
            reply.insert("totalSize", total);
            reply.insert("totalSizeMb", total / (1024 * 1024));
        }
        reply.insert("ok", 1.0);
        Ok(reply)
    }

    pub(super) async fn list_collections(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        shoal_common::ids::validate_db_name(db)?;
        let ns = format!("{db}.$cmd.listCollections");
        let hosts = if db == "config" {
            vec![self.cluster.config_host().to_owned()]
        } else {
            self.all_hosts(false).await?
        };
        let mut request = shard_command(command);
        request.insert("cursor", doc! {"batchSize": i32::MAX});
        let calls = hosts
            .iter()
            .map(|host| self.cluster.call_ok(host, db, request.clone()));
        let mut by_name: BTreeMap<String, Document> = BTreeMap::new();
        for reply in join_all(calls).await {
            let (_, _, batch) = crate::cursors::parse_cursor(&reply?, "firstBatch")?;
            for entry in batch {
                if let Ok(name) = entry.get_str("name") {
                    by_name.entry(name.to_owned()).or_insert(entry);
                }
            }
        }
        let batch_docs = command
            .get_document("cursor")
            .ok()
            .and_then(|cursor| super::count_field(cursor, "batchSize").ok().flatten())
            .unwrap_or(u64::MAX);
        let cursor = Cursor::Buffered(by_name.into_values().collect());
        self.first_batch(&ns, cursor, batch_docs, false).await
    }

    pub(super) async fn list_indexes(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, "listIndexes")?;
        let (placement, routing) = self.placement(&ns).await?;
        let host = match &placement {
            // The primary shard holds every collection of its database, sharded or not, from
            // `shardCollection` on, whatever chunks it owns.
            Placement::Sharded(_) => {
                let primary = routing.databases.get(&ns.db).map(|db| db.primary.clone());
                let primary = primary.ok_or_else(|| {
                    CommandError::internal(format!("sharded {ns} in a database without a primary"))
                })?;
                routing.shard_host(&primary)?.to_owned()
            }
            other => match self.unsharded_host(other, &routing)? {
                Some(host) => host,
                None => {
                    return Err(CommandError::new(
                        ErrorCode::NAMESPACE_NOT_FOUND,
                        format!("ns does not exist: {ns}"),
                    ));
                }
            },
        };
        self.cluster.call(&host, db, shard_command(command)).await
    }

    pub(super) async fn create(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, "create")?;
        let (placement, routing) = self.placement_for_write(&ns).await?;
        if let Placement::Sharded(_) = placement {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_EXISTS,
                format!("Collection {ns} already exists."),
            ));
        }
        let host = self
            .unsharded_host(&placement, &routing)?
            .ok_or_else(|| CommandError::internal("no primary shard"))?;
        self.cluster.call(&host, db, shard_command(command)).await
    }

    pub(super) async fn drop_collection(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, "drop")?;
        if ns.db == "config" || ns.db == "admin" {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                format!("cannot drop {ns} through the router"),
            ));
        }
        let (placement, routing) = self.placement_for_ddl(&ns).await?;
        let request = shard_command(command);
        match &placement {
            Placement::Sharded(_) => {
                let mut hosts = Vec::new();
                for shard in routing.shard_ids() {
                    hosts.push(routing.shard_host(&shard)?.to_owned());
                }
                let calls = hosts
                    .iter()
                    .map(|host| self.cluster.call(host, db, request.clone()));
                for reply in join_all(calls).await {
                    let reply = reply?;
                    match CommandError::from_reply(&reply) {
                        Some(error) if error.code != ErrorCode::NAMESPACE_NOT_FOUND => {
                            return Err(error);
                        }
                        _ => {}
                    }
                }
                let reply = self
                    .cluster
                    .call_config("admin", doc! {"_shoalDropCollection": ns.to_string()})
                    .await?;
                if let Some(error) = CommandError::from_reply(&reply) {
                    return Err(error);
                }
                self.cluster.refresh().await?;
                Ok(doc! {"nIndexesWas": 1, "ns": ns.to_string(), "ok": 1.0})
            }
            Placement::Missing => Err(CommandError::new(
                ErrorCode::NAMESPACE_NOT_FOUND,
                "ns not found",
            )),
            other => {
                let host = self
                    .unsharded_host(other, &routing)?
                    .ok_or_else(|| CommandError::internal("no host"))?;
                self.cluster.call(&host, db, request).await
            }
        }
    }

    pub(super) async fn drop_database(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        if matches!(db, "admin" | "config" | "local") {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                format!("Dropping the '{db}' database is prohibited."),
            ));
        }
        let hosts = self.all_hosts(false).await?;
        let request = shard_command(command);
        let calls = hosts
            .iter()
            .map(|host| self.cluster.call_ok(host, db, request.clone()));
        for reply in join_all(calls).await {
            reply?;
        }
        let reply = self
            .cluster
            .call_config("admin", doc! {"_shoalDropDatabase": db})
            .await?;
        if let Some(error) = CommandError::from_reply(&reply) {
            return Err(error);
        }
        self.cluster.refresh().await?;
        Ok(doc! {"dropped": db, "ok": 1.0})
    }
}
