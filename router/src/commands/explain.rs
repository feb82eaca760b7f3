//! `explain` through the router: the inner command is routed like the command itself, each
//! targeted shard explains its part, and the router answers in mongos's shape — a
//! `SINGLE_SHARD` or `SHARD_MERGE` plan listing each shard's plan, and execution statistics
//! summed over the shards.

use bson::{Bson, Document, doc};
use futures::future::join_all;
use shoal_common::{CommandError, ErrorCode, Namespace};

use super::{
    Placement, Router, command_namespace, document_field, int_field, shard_command,
    stale::{ShardTarget, retry_stale},
};

/// The commands `explain` accepts, with the field holding their filter.
const EXPLAINABLE: &[(&str, &str)] = &[
    ("find", "filter"),
    ("count", "query"),
    ("distinct", "query"),
    ("aggregate", ""),
    ("findAndModify", "query"),
    ("update", ""),
    ("delete", ""),
];

impl Router {
    /// `{explain: {<command>}, verbosity}` or `{aggregate: ..., explain: true}`.
    pub(super) async fn explain_command(
        &self,
        db: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        let (inner, verbosity) = match command.get("explain") {
            Some(Bson::Document(inner)) => (
                inner.clone(),
                command.get_str("verbosity").unwrap_or("executionStats"),
            ),
            Some(Bson::Boolean(true)) => {
                let mut inner = command.clone();
                inner.remove("explain");
                (inner, "executionStats")
            }
            Some(other) => return Err(CommandError::type_mismatch("explain", "object", other)),
            None => return Err(CommandError::bad_value("explain needs a command")),
        };
        let name = inner.keys().next().cloned().unwrap_or_default();
        let Some((_, filter_field)) = EXPLAINABLE.iter().find(|(command, _)| *command == name)
        else {
            return Err(CommandError::new(
                ErrorCode::COMMAND_NOT_FOUND,
                format!("Explain failed due to unknown command: {name}"),
            ));
        };
        let ns = command_namespace(db, &inner, &name)?;
        let filter = explain_filter(&inner, &name, filter_field)?;
        let explained = Explained {
            name: &name,
            inner: &inner,
            verbosity,
            filter: &filter,
        };
        retry_stale(&self.cluster, &ns, || {
            self.explain_once(db, &ns, &explained)
        })
        .await
    }

    /// One attempt of an `explain`, routed by one snapshot.
    async fn explain_once(
        &self,
        db: &str,
        ns: &Namespace,
        explained: &Explained<'_>,
    ) -> Result<Document, CommandError> {
        let (placement, routing) = self.placement(ns).await?;
        if matches!(placement, Placement::Missing) {
            return Ok(doc! {
                "queryPlanner": {"namespace": ns.to_string(), "winningPlan": {"stage": "EOF"}},
                "executionStats": {"nReturned": 0, "totalKeysExamined": 0, "totalDocsExamined": 0, "executionTimeMillis": 0},
                "ok": 1.0,
            });
        }
        let targets = self.read_target_shards(&placement, &routing, explained.filter)?;
        let calls = targets.iter().map(|(shard, target)| {
            let request = explained.request(target);
            async move {
                let reply = self.cluster.call_ok(&target.host, db, request).await;
                (shard.clone(), reply)
            }
        });
        let mut per_shard = Vec::new();
        for (shard, reply) in join_all(calls).await {
            per_shard.push((shard, reply?));
        }
        Ok(merge_explains(&ns.to_string(), per_shard))
    }

    /// The shards (with addresses) a read with `filter` reaches; the config server for `config`.
    fn read_target_shards(
        &self,
        placement: &Placement,
        routing: &crate::topology::RoutingCache,
        filter: &Document,
    ) -> Result<Vec<(String, ShardTarget)>, CommandError> {
        match placement {
            Placement::Sharded(collection) => {
                let shoal_common::chunks::Targeting::Shards(shards) =
                    collection.map.target_filter(filter);
                shards
                    .iter()
                    .map(|shard| {
                        let target = ShardTarget {
                            host: routing.shard_host(shard)?.to_owned(),
                            version: Some(collection.map.shard_version(shard)),
                        };
                        Ok((shard.to_string(), target))
                    })
                    .collect()
            }
            Placement::Unsharded(shard) => Ok(vec![(
                shard.to_string(),
                ShardTarget::unversioned(routing.shard_host(shard)?.to_owned()),
            )]),
            Placement::Config => Ok(vec![(
                "config".to_owned(),
                ShardTarget::unversioned(self.cluster.config_host().to_owned()),
            )]),
            Placement::Missing => Ok(Vec::new()),
        }
    }
}

/// An explained command, as the router received it.
struct Explained<'a> {
    /// The explained command's name.
    name: &'a str,
    /// The command being explained.
    inner: &'a Document,
    /// The explain verbosity.
    verbosity: &'a str,
    /// The filter that decides which shards it reaches.
    filter: &'a Document,
}

impl Explained<'_> {
    /// The explain request for one shard. The shard version goes into the explained command,
    /// where MongoDB puts it, and beside it at the top level for a shard that checks there.
    fn request(&self, target: &ShardTarget) -> Document {
        let inner = target.request(&shard_command(self.inner));
        if self.name == "aggregate" {
            let mut request = inner;
            request.insert("explain", true);
            request.remove("cursor");
            return request;
        }
        let request = doc! {"explain": inner, "verbosity": self.verbosity};
        target.request(&request)
    }
}

/// The filter that decides which shards an explained command reaches.
fn explain_filter(
    inner: &Document,
    name: &str,
    filter_field: &str,
) -> Result<Document, CommandError> {
    if !filter_field.is_empty() {
        return Ok(document_field(inner, filter_field)?
            .cloned()
            .unwrap_or_default());
    }
    let first_of = |array: &str, field: &str| {
        inner
            .get_array(array)
            .ok()
            .and_then(|items| items.first())
            .and_then(Bson::as_document)
            .and_then(|item| item.get_document(field).ok())
            .cloned()
            .unwrap_or_default()
    };
    Ok(match name {
        "aggregate" => first_of("pipeline", "$match"),
        "update" => first_of("updates", "q"),
        "delete" => first_of("deletes", "q"),
        _ => Document::new(),
    })
}

/// Combines shard explains into mongos's shape.
fn merge_explains(ns: &str, per_shard: Vec<(String, Document)>) -> Document {
    let stage = if per_shard.len() == 1 {
        "SINGLE_SHARD"
    } else {
        "SHARD_MERGE"
    };
    let mut plans = Vec::new();
    let mut executions = Vec::new();
    let (mut returned, mut keys, mut docs, mut millis) = (0, 0, 0, 0);
    for (shard, reply) in per_shard {
        let mut plan = reply
            .get_document("queryPlanner")
            .cloned()
            .unwrap_or_default();
        plan.insert("shardName", shard.clone());
        plans.push(Bson::Document(plan));
        let mut stats = reply
            .get_document("executionStats")
            .cloned()
            .unwrap_or_default();
        returned += int_field(&stats, "nReturned");
        keys += int_field(&stats, "totalKeysExamined");
        docs += int_field(&stats, "totalDocsExamined");
        millis = millis.max(int_field(&stats, "executionTimeMillis"));
        stats.insert("shardName", shard);
        executions.push(Bson::Document(stats));
    }
    doc! {
        "queryPlanner": {
            "mongosPlannerVersion": 1,
            "namespace": ns,
            "winningPlan": {"stage": stage, "shards": plans},
        },
        "executionStats": {
            "nReturned": returned,
            "executionTimeMillis": millis,
            "totalKeysExamined": keys,
            "totalDocsExamined": docs,
            "executionStages": {"stage": stage, "shards": executions},
        },
        "ok": 1.0,
    }
}
