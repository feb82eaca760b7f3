//! Index and collection-definition commands through the router: `createIndexes`,
//! `dropIndexes` and `collMod` go to every shard that may hold the collection's documents (the
//! owners of its chunks, and its database's primary, which holds every collection from its
//! creation on); `renameCollection` goes to the primary of an unsharded collection.

use std::collections::BTreeSet;

use bson::{Bson, Document};
use futures::future::join_all;
use shoal_common::{CommandError, ErrorCode, Namespace, ShardId, chunks::ShardKeyPattern};

use super::{Placement, Router, command_namespace, shard_command};
use crate::topology::RoutingCache;

impl Router {
    /// The shards a collection-definition command must reach.
    fn definition_targets(
        &self,
        ns: &Namespace,
        placement: &Placement,
        routing: &RoutingCache,
    ) -> Result<Vec<(ShardId, String)>, CommandError> {
        let mut shards = BTreeSet::new();
        if let Some(database) = routing.databases.get(&ns.db) {
            shards.insert(database.primary.clone());
        }
        if let Placement::Sharded(collection) = placement {
            shards.extend(collection.map.shards());
        }
        shards
            .into_iter()
            .map(|shard| Ok((shard.clone(), routing.shard_host(&shard)?.to_owned())))
            .collect()
    }

    /// Sends `request` to each target; returns the replies by shard, or the first error.
    async fn broadcast(
        &self,
        db: &str,
        targets: &[(ShardId, String)],
        request: &Document,
    ) -> Result<Vec<(ShardId, Document)>, CommandError> {
        let calls = targets.iter().map(|(shard, host)| async move {
            (
                shard.clone(),
                self.cluster.call(host, db, request.clone()).await,
            )
        });
        let mut replies = Vec::new();
        for (shard, reply) in join_all(calls).await {
            replies.push((shard, reply?));
        }
        Ok(replies)
    }

    pub(super) async fn create_indexes(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, "createIndexes")?;
        let (placement, routing) = self.placement_for_write(&ns).await?;
        if let Placement::Sharded(collection) = &placement {
            check_unique_indexes(&collection.map.key, command)?;
        }
        let targets = self.definition_targets(&ns, &placement, &routing)?;
        let replies = self
            .broadcast(db, &targets, &shard_command(command))
            .await?;
        let mut raw = Document::new();
        for (shard, reply) in &replies {
            if let Some(error) = CommandError::from_reply(reply) {
                return Err(error);
            }
            raw.insert(shard.to_string(), reply.clone());
        }
        // The primary's counts stand for the collection, as mongos reports them.
        let mut summary = replies
            .first()
            .map(|(_, reply)| reply.clone())
            .unwrap_or_default();
        summary.insert("raw", raw);
        summary.insert("ok", 1.0);
        Ok(summary)
    }

    pub(super) async fn drop_indexes(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        self.definition_command(db, command, "dropIndexes").await
    }

    pub(super) async fn coll_mod(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        self.definition_command(db, command, "collMod").await
    }

    /// Runs a definition change on every target. A shard that never had the collection or the
    /// index (NamespaceNotFound, IndexNotFound) is fine as long as one shard had it.
    async fn definition_command(
        &self,
        db: &str,
        command: &Document,
        name: &str,
    ) -> Result<Document, CommandError> {
        let ns = command_namespace(db, command, name)?;
        let (placement, routing) = self.placement_for_ddl(&ns).await?;
        if matches!(placement, Placement::Missing | Placement::Config) {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_NOT_FOUND,
                format!("ns does not exist: {ns}"),
            ));
        }
        let targets = self.definition_targets(&ns, &placement, &routing)?;
        let replies = self
            .broadcast(db, &targets, &shard_command(command))
            .await?;
        let mut first_ok = None;
        let mut first_missing = None;
        for (_, reply) in replies {
            match CommandError::from_reply(&reply) {
                None => first_ok = first_ok.or(Some(reply)),
                Some(error) if is_missing(&error) => first_missing = first_missing.or(Some(error)),
                Some(error) => return Err(error),
            }
        }
        match (first_ok, first_missing) {
            (Some(reply), _) => Ok(reply),
            (None, Some(error)) => Err(error),
            (None, None) => Err(CommandError::internal(format!("{name} reached no shard"))),
        }
    }

    pub(super) async fn rename_collection(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        if db != "admin" {
            return Err(CommandError::admin_only("renameCollection"));
        }
        let source = namespace_field(command, "renameCollection")?;
        let target = namespace_field(command, "to")?;
        if source.db != target.db {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                "renaming a collection into another database is not supported yet",
            ));
        }
        let routing = self.cluster.routing().await?;
        if routing.collection(&source).is_some() || routing.collection(&target).is_some() {
            return Err(CommandError::new(
                ErrorCode::ILLEGAL_OPERATION,
                "renameCollection of (or onto) a sharded collection is not supported",
            ));
        }
        let placement = super::placement_in(&routing, &source);
        let Some(host) = self.unsharded_host(&placement, &routing)? else {
            return Err(CommandError::new(
                ErrorCode::NAMESPACE_NOT_FOUND,
                format!("Source collection {source} does not exist"),
            ));
        };
        self.cluster
            .call(&host, "admin", shard_command(command))
            .await
    }
}

fn is_missing(error: &CommandError) -> bool {
    error.code == ErrorCode::NAMESPACE_NOT_FOUND || error.code == ErrorCode::INDEX_NOT_FOUND
}

fn namespace_field(command: &Document, field: &str) -> Result<Namespace, CommandError> {
    match command.get(field) {
        Some(Bson::String(ns)) => Namespace::parse(ns),
        Some(other) => Err(CommandError::type_mismatch(field, "string", other)),
        None => Err(CommandError::bad_value(format!("missing '{field}'"))),
    }
}

/// A unique index on a sharded collection must have the shard key as a prefix: uniqueness is
/// only enforceable shard by shard when equal keys always live on the same shard.
fn check_unique_indexes(
    shard_key: &ShardKeyPattern,
    command: &Document,
) -> Result<(), CommandError> {
    let specs = match command.get("indexes") {
        Some(Bson::Array(specs)) => specs,
        Some(other) => return Err(CommandError::type_mismatch("indexes", "array", other)),
        None => return Err(CommandError::missing_field("createIndexes", "indexes")),
    };
    for spec in specs.iter().filter_map(Bson::as_document) {
        if !matches!(spec.get("unique"), Some(Bson::Boolean(true))) {
            continue;
        }
        let key = spec.get_document("key").cloned().unwrap_or_default();
        let index_fields: Vec<&str> = key.keys().map(String::as_str).collect();
        let prefixed = shard_key.fields.len() <= index_fields.len()
            && shard_key
                .fields
                .iter()
                .zip(&index_fields)
                .all(|((field, _), index)| field == index);
        if !prefixed && index_fields != ["_id"] {
            return Err(CommandError::new(
                ErrorCode::CANNOT_CREATE_INDEX,
                format!(
                    "cannot create unique index over {key} with shard key pattern {}",
                    shard_key.to_document()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    #[test]
    fn unique_indexes_must_start_with_the_shard_key() {
        let key = ShardKeyPattern::parse(&doc! {"k": 1}).unwrap();
        let command =
            |index: Document| doc! {"indexes": [{"key": index, "name": "x", "unique": true}]};
        assert!(check_unique_indexes(&key, &command(doc! {"k": 1, "a": 1})).is_ok());
        assert!(check_unique_indexes(&key, &command(doc! {"a": 1})).is_err());
        assert!(
            check_unique_indexes(&key, &doc! {"indexes": [{"key": {"a": 1}, "name": "a"}]}).is_ok()
        );
    }
}
