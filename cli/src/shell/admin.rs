//! Administrative helpers: `show dbs|collections`, the `sh.*` sharding helpers (sent as the
//! admin commands mongosh sends) and `rs.*` replica-set helpers, plus the reads behind
//! `sh.status()`.
//!
//! `sh.status()` reads the `config` database with plain `find`s and sorts client-side, so it
//! needs nothing from the router beyond ordinary queries on `config.*`.

use std::cmp::Ordering;

use bson::{Bson, Document, doc};
use shoal_common::bsonorder::compare;

use super::{
    args::{Args, ShellError, ShellResult, bson_as_i64},
    eval::{MATERIALIZED_DOCS_MAX, Shell, Value},
    format::{CollectionStatus, ShardingStatus, format_database_table, format_sharding_status},
};

/// mongosh's default `rs.stepDown()` period.
const STEP_DOWN_SECS_DEFAULT: i64 = 60;
/// Error code for an unknown command, which mongosh explains for `sh.*` helpers.
const COMMAND_NOT_FOUND: i32 = 59;

impl Shell {
    pub(super) async fn show(&mut self, what: &str) -> ShellResult<()> {
        match what {
            "dbs" | "databases" => {
                let command = doc! { "listDatabases": 1, "nameOnly": false };
                let reply = self.database("admin").run_command(command).await?;
                let databases = reply.get_array("databases").cloned().unwrap_or_default();
                let rows: Vec<(String, i64)> = databases
                    .iter()
                    .filter_map(Bson::as_document)
                    .map(|entry| {
                        let name = entry.get_str("name").unwrap_or_default().to_string();
                        let size = entry.get("sizeOnDisk").and_then(bson_as_i64).unwrap_or(0);
                        (name, size)
                    })
                    .collect();
                println!("{}", format_database_table(&rows));
            }
            "collections" | "tables" => {
                let mut names = self.database(&self.db_name).list_collection_names().await?;
                names.sort();
                if !names.is_empty() {
                    println!("{}", names.join("\n"));
                }
            }
            _ => {
                return Err(ShellError::Type(format!(
                    "don't know how to show '{what}' (try dbs, collections)"
                )));
            }
        }
        Ok(())
    }

    pub(super) async fn sh_method(&mut self, method: &str, mut args: Args) -> ShellResult<Value> {
        let command = match method {
            "status" => {
                args.finish()?;
                let status = self.read_sharding_status().await?;
                return Ok(Value::Text(format_sharding_status(&status)));
            }
            "getBalancerState" => {
                args.finish()?;
                let reply = self.admin_command(doc! { "balancerStatus": 1 }).await?;
                let enabled = reply
                    .get_str("mode")
                    .map(|mode| mode != "off")
                    .unwrap_or(true);
                return Ok(Value::Bson(Bson::Boolean(enabled)));
            }
            _ => sh_command(method, &mut args)?,
        };
        args.finish()?;
        match self.admin_command(command).await {
            Err(ShellError::Server {
                code: COMMAND_NOT_FOUND,
                code_name,
                message,
            }) => Err(ShellError::Server {
                code: COMMAND_NOT_FOUND,
                code_name,
                message: format!("{message}. Are you connected to mongos?"),
            }),
            result => Ok(Value::Bson(Bson::Document(result?))),
        }
    }

    pub(super) async fn rs_method(&mut self, method: &str, mut args: Args) -> ShellResult<Value> {
        let command = match method {
            "status" => doc! { "replSetGetStatus": 1 },
            "conf" | "config" => doc! { "replSetGetConfig": 1 },
            "initiate" => {
                let config = args.optional_document("config")?.unwrap_or_default();
                doc! { "replSetInitiate": config }
            }
            "stepDown" => {
                let secs = args
                    .optional_integer("seconds")?
                    .unwrap_or(STEP_DOWN_SECS_DEFAULT);
                let mut command = doc! { "replSetStepDown": secs };
                if let Some(catch_up) = args.optional_integer("catch-up seconds")? {
                    command.insert("secondaryCatchUpPeriodSecs", catch_up);
                }
                command
            }
            "hello" | "isMaster" => doc! { "hello": 1 },
            _ => return Err(ShellError::Type(format!("rs.{method} is not a function"))),
        };
        args.finish()?;
        let reply = self.admin_command(command).await?;
        if matches!(method, "conf" | "config")
            && let Ok(config) = reply.get_document("config")
        {
            return Ok(Value::Bson(Bson::Document(config.clone())));
        }
        Ok(Value::Bson(Bson::Document(reply)))
    }

    async fn admin_command(&self, command: Document) -> ShellResult<Document> {
        Ok(self.database("admin").run_command(command).await?)
    }

    async fn read_sharding_status(&self) -> ShellResult<ShardingStatus> {
        let mut shards = self.read_config("shards", Document::new()).await?;
        sort_by_field(&mut shards, "_id");
        let balancer = self.admin_command(doc! { "balancerStatus": 1 }).await.ok();
        let mut databases = self.read_config("databases", Document::new()).await?;
        sort_by_field(&mut databases, "_id");
        let mut collection_docs = self.read_config("collections", Document::new()).await?;
        collection_docs.retain(|collection| {
            !collection.get_bool("dropped").unwrap_or(false)
                && !collection.get_bool("unsplittable").unwrap_or(false)
        });
        sort_by_field(&mut collection_docs, "_id");
        let mut collections = Vec::with_capacity(collection_docs.len());
        for collection in collection_docs {
            let mut chunks = self
                .read_config("chunks", chunks_filter(&collection))
                .await?;
            sort_by_field(&mut chunks, "min");
            collections.push(CollectionStatus { collection, chunks });
        }
        Ok(ShardingStatus {
            shards,
            balancer,
            databases,
            collections,
        })
    }

    async fn read_config(&self, collection: &str, filter: Document) -> ShellResult<Vec<Document>> {
        let handle = self.database("config").collection::<Document>(collection);
        let limit = i64::try_from(MATERIALIZED_DOCS_MAX).unwrap_or(i64::MAX);
        let mut cursor = handle.find(filter).limit(limit).await?;
        let mut documents = Vec::new();
        while cursor.advance().await? {
            documents.push(cursor.deserialize_current()?);
        }
        Ok(documents)
    }
}

/// Maps `sh.<method>(args)` to the admin command mongosh sends.
fn sh_command(method: &str, args: &mut Args) -> ShellResult<Document> {
    let command = match method {
        "addShard" => doc! { "addShard": args.string("url")? },
        "enableSharding" => {
            let mut command = doc! { "enableSharding": args.string("database")? };
            if let Some(primary) = args.optional_string("primary shard")? {
                command.insert("primaryShard", primary);
            }
            command
        }
        "shardCollection" => shard_collection_command(args)?,
        "splitAt" => doc! { "split": args.string("namespace")?, "middle": args.document("key")? },
        "splitFind" => doc! { "split": args.string("namespace")?, "find": args.document("query")? },
        "moveChunk" => doc! {
            "moveChunk": args.string("namespace")?,
            "find": args.document("query")?,
            "to": args.string("destination shard")?,
        },
        "moveRange" => {
            let mut command = doc! {
                "moveRange": args.string("namespace")?,
                "toShard": args.string("destination shard")?,
            };
            if let Some(min) = args.optional_document("min")? {
                command.insert("min", min);
            }
            if let Some(max) = args.optional_document("max")? {
                command.insert("max", max);
            }
            command
        }
        "listShards" => doc! { "listShards": 1 },
        "isBalancerRunning" => doc! { "balancerStatus": 1 },
        "startBalancer" => doc! { "balancerStart": 1 },
        "stopBalancer" => doc! { "balancerStop": 1 },
        _ => return Err(ShellError::Type(format!("sh.{method} is not a function"))),
    };
    Ok(command)
}

fn shard_collection_command(args: &mut Args) -> ShellResult<Document> {
    let mut command = doc! {
        "shardCollection": args.string("namespace")?,
        "key": args.document("key")?,
    };
    if let Some(unique) = args.optional_bool("unique")? {
        command.insert("unique", unique);
    }
    command.extend(args.optional_document("options")?.unwrap_or_default());
    Ok(command)
}

/// Chunks of 5.0+ format collections are matched by `uuid`, older ones by `ns`.
fn chunks_filter(collection: &Document) -> Document {
    match collection.get("uuid") {
        Some(uuid) => doc! { "uuid": uuid.clone() },
        None => doc! { "ns": collection.get("_id").cloned().unwrap_or(Bson::Null) },
    }
}

fn sort_by_field(documents: &mut [Document], field: &str) {
    documents.sort_by(|a, b| match (a.get(field), b.get(field)) {
        (Some(a), Some(b)) => compare(a, b),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_helpers_send_mongosh_commands() {
        let mut args = Args::new(
            "shardCollection",
            vec![
                Bson::String("test.users".into()),
                Bson::Document(doc! { "k": 1 }),
                Bson::Boolean(true),
            ],
        );
        let command = sh_command("shardCollection", &mut args).unwrap();
        assert_eq!(
            command,
            doc! { "shardCollection": "test.users", "key": { "k": 1 }, "unique": true }
        );

        let mut args = Args::new(
            "moveChunk",
            vec![
                Bson::String("test.users".into()),
                Bson::Document(doc! { "k": 5 }),
                Bson::String("shard1".into()),
            ],
        );
        let command = sh_command("moveChunk", &mut args).unwrap();
        assert_eq!(
            command,
            doc! { "moveChunk": "test.users", "find": { "k": 5 }, "to": "shard1" }
        );

        let mut args = Args::new(
            "splitAt",
            vec![
                Bson::String("test.users".into()),
                Bson::Document(doc! { "k": 5 }),
            ],
        );
        let command = sh_command("splitAt", &mut args).unwrap();
        assert_eq!(
            command,
            doc! { "split": "test.users", "middle": { "k": 5 } }
        );

        let mut args = Args::new("enableSharding", vec![Bson::String("test".into())]);
        let command = sh_command("enableSharding", &mut args).unwrap();
        assert_eq!(command, doc! { "enableSharding": "test" });

        let mut args = Args::new("addShard", vec![Bson::String("rs/h:1".into())]);
        assert_eq!(
            sh_command("addShard", &mut args).unwrap(),
            doc! { "addShard": "rs/h:1" }
        );
    }

    #[test]
    fn sh_helper_argument_errors_are_type_errors() {
        let mut args = Args::new("splitAt", vec![Bson::Int32(1)]);
        let error = sh_command("splitAt", &mut args).unwrap_err();
        assert_eq!(
            error.to_string(),
            "TypeError: splitAt(): argument 1 (namespace) must be a string"
        );
        let mut args = Args::new("nope", vec![]);
        assert!(matches!(
            sh_command("nope", &mut args),
            Err(ShellError::Type(_))
        ));
    }

    #[test]
    fn chunks_match_by_uuid_when_present() {
        let uuid = Bson::Binary(bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: vec![0; 16],
        });
        let collection = doc! { "_id": "test.users", "uuid": uuid.clone() };
        assert_eq!(chunks_filter(&collection), doc! { "uuid": uuid });
        let legacy = doc! { "_id": "test.users" };
        assert_eq!(chunks_filter(&legacy), doc! { "ns": "test.users" });
    }

    #[test]
    fn chunks_sort_by_min_with_bson_order() {
        let mut chunks = vec![
            doc! { "min": { "k": 5 }, "shard": "b" },
            doc! { "min": { "k": Bson::MinKey }, "shard": "a" },
            doc! { "min": { "k": 10 }, "shard": "c" },
        ];
        sort_by_field(&mut chunks, "min");
        let shards: Vec<&str> = chunks.iter().map(|c| c.get_str("shard").unwrap()).collect();
        assert_eq!(shards, ["a", "b", "c"]);
    }
}
