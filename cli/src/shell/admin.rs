//! Administrative helpers: `show dbs|collections`, the `sh.*` sharding helpers (sent as the
//! admin commands mongosh sends) and `rs.*` replica-set helpers, plus the reads behind
//! `sh.status()`.
//!
//! `sh.status()` reads the `config` database with plain `find`s and sorts client-side, so it
//! needs nothing from the router beyond ordinary queries on `config.*` and `balancerStatus`
//! (whether a balancer round runs now). The zone helpers map to `addShardToZone`,
//! `removeShardFromZone` and `updateZoneKeyRange` (`zone: null` for `removeRangeFromZone`), the
//! balancer helpers to `balancerStart`/`balancerStop`/`balancerStatus`/
//! `balancerCollectionStatus`, and `enableBalancing`/`disableBalancing` to
//! `configureCollectionBalancing` with `enableBalancing` (the router refuses direct writes to
//! `config.collections`, which is what mongosh would do).

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
/// Balancer rounds `sh.status()` looks at for failures, as mongosh does.
const STATUS_BALANCER_ROUNDS: i64 = 5;
/// The window of migrations `sh.status()` summarises.
const STATUS_MIGRATIONS_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

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
                // As mongosh: the `config.settings` document decides; absent means running.
                let settings = self.balancer_settings().await?;
                let stopped = settings.is_some_and(|doc| {
                    doc.get_bool("stopped").unwrap_or(false) || doc.get_str("mode") == Ok("off")
                });
                return Ok(Value::Bson(Bson::Boolean(!stopped)));
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

    /// `rs.<method>(args)` on the connected server. Membership edits (`add`, `remove`,
    /// `reconfig`) read the current configuration first and send it back with the next
    /// version, as mongosh does.
    pub(super) async fn rs_method(&mut self, method: &str, mut args: Args) -> ShellResult<Value> {
        let command = match method {
            "add" | "remove" | "reconfig" => {
                let edit = ConfigEdit::from_args(method, &mut args)?;
                args.finish()?;
                let current = self.replica_set_config().await?;
                edit.command(&current)?
            }
            _ => {
                let command = rs_command(method, &mut args)?;
                args.finish()?;
                command
            }
        };
        let reply = self.admin_command(command).await?;
        if matches!(method, "conf" | "config")
            && let Ok(config) = reply.get_document("config")
        {
            return Ok(Value::Bson(Bson::Document(config.clone())));
        }
        Ok(Value::Bson(Bson::Document(reply)))
    }

    async fn replica_set_config(&self) -> ShellResult<Document> {
        let reply = self.admin_command(doc! { "replSetGetConfig": 1 }).await?;
        match reply.get_document("config") {
            Ok(config) => Ok(config.clone()),
            Err(_) => Err(ShellError::Driver(format!(
                "MongoError: replSetGetConfig answered without a config document: {reply}"
            ))),
        }
    }

    async fn admin_command(&self, command: Document) -> ShellResult<Document> {
        Ok(self.database("admin").run_command(command).await?)
    }

    async fn balancer_settings(&self) -> ShellResult<Option<Document>> {
        let settings = self
            .read_config("settings", doc! { "_id": "balancer" })
            .await?;
        Ok(settings.into_iter().next())
    }

    async fn read_sharding_status(&self) -> ShellResult<ShardingStatus> {
        let mut shards = self.read_config("shards", Document::new()).await?;
        sort_by_field(&mut shards, "_id");
        let balancer = self.admin_command(doc! { "balancerStatus": 1 }).await.ok();
        let balancer_settings = self.balancer_settings().await?;
        let balancer_rounds = self
            .read_config_sorted(
                "actionlog",
                doc! { "what": "balancer.round" },
                doc! { "time": -1 },
                STATUS_BALANCER_ROUNDS,
            )
            .await?;
        let since = bson::DateTime::from_millis(
            bson::DateTime::now().timestamp_millis() - STATUS_MIGRATIONS_WINDOW_MS,
        );
        let migrations_filter = doc! {
            "what": { "$in": ["moveChunk.commit", "moveChunk.error"] },
            "time": { "$gt": since },
        };
        let migrations = self.read_config("actionlog", migrations_filter).await?;
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
            let ns = collection.get("_id").cloned().unwrap_or(Bson::Null);
            let mut zones = self.read_config("tags", doc! { "ns": ns }).await?;
            sort_by_field(&mut zones, "min");
            collections.push(CollectionStatus {
                collection,
                chunks,
                zones,
            });
        }
        Ok(ShardingStatus {
            shards,
            balancer,
            balancer_settings,
            balancer_rounds,
            migrations,
            databases,
            collections,
        })
    }

    async fn read_config_sorted(
        &self,
        collection: &str,
        filter: Document,
        sort: Document,
        limit: i64,
    ) -> ShellResult<Vec<Document>> {
        let handle = self.database("config").collection::<Document>(collection);
        let mut cursor = handle.find(filter).sort(sort).limit(limit).await?;
        let mut documents = Vec::new();
        while cursor.advance().await? {
            documents.push(cursor.deserialize_current()?);
        }
        Ok(documents)
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

/// Maps the `rs.<method>(args)` helpers that need no current configuration to their command;
/// consumes and checks every argument.
fn rs_command(method: &str, args: &mut Args) -> ShellResult<Document> {
    let command = match method {
        "status" => doc! { "replSetGetStatus": 1 },
        "conf" | "config" => doc! { "replSetGetConfig": 1 },
        "initiate" => match args.optional_document("config")? {
            Some(config) => doc! { "replSetInitiate": config },
            // `1`, not `{}`: servers read a non-document as "a set of this node alone".
            None => doc! { "replSetInitiate": 1 },
        },
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
        "hello" => doc! { "hello": 1 },
        "isMaster" => doc! { "isMaster": 1 },
        _ => return Err(ShellError::Type(format!("rs.{method} is not a function"))),
    };
    Ok(command)
}

/// A membership change made from the current configuration (`rs.add`, `rs.remove`,
/// `rs.reconfig`), parsed from the helper's arguments before anything is sent.
#[derive(Debug, Clone, PartialEq)]
enum ConfigEdit {
    /// `rs.add(host | member, arbiterOnly?)`: the member, `_id` not yet assigned if absent.
    Add(Document),
    /// `rs.remove(host)`.
    Remove(String),
    /// `rs.reconfig(config, options?)`: the whole new configuration and command options
    /// such as `force`.
    Replace(Document, Document),
}

impl ConfigEdit {
    fn from_args(method: &str, args: &mut Args) -> ShellResult<ConfigEdit> {
        match method {
            "add" => {
                let mut member = match args.any("host or member")? {
                    Bson::String(host) => doc! { "host": host },
                    Bson::Document(member) => member,
                    _ => {
                        return Err(ShellError::Type(
                            "add(): argument 1 (host or member) must be a string or an object"
                                .to_string(),
                        ));
                    }
                };
                if args.optional_bool("arbiterOnly")? == Some(true) {
                    member.insert("arbiterOnly", true);
                }
                Ok(ConfigEdit::Add(member))
            }
            "remove" => Ok(ConfigEdit::Remove(args.string("host")?)),
            "reconfig" => {
                let config = args.document("config")?;
                let options = args.optional_document("options")?.unwrap_or_default();
                Ok(ConfigEdit::Replace(config, options))
            }
            _ => Err(ShellError::Type(format!("rs.{method} is not a function"))),
        }
    }

    /// The `replSetReconfig` command that applies this edit to `current`.
    fn command(&self, current: &Document) -> ShellResult<Document> {
        let (config, options) = match self {
            ConfigEdit::Add(member) => (config_with_member(current, member.clone())?, None),
            ConfigEdit::Remove(host) => (config_without_member(current, host)?, None),
            ConfigEdit::Replace(config, options) => {
                let mut config = config.clone();
                config.insert("version", next_version(current)?);
                (config, Some(options))
            }
        };
        let mut command = doc! { "replSetReconfig": config };
        command.extend(options.cloned().unwrap_or_default());
        Ok(command)
    }
}

/// The members array of a configuration document.
fn config_members(config: &Document) -> ShellResult<Vec<Document>> {
    let members = config
        .get_array("members")
        .map_err(|_| ShellError::Type("the replica set config has no members array".to_string()))?;
    members
        .iter()
        .map(|member| match member {
            Bson::Document(member) => Ok(member.clone()),
            _ => Err(ShellError::Type(
                "the replica set config has a member that is not an object".to_string(),
            )),
        })
        .collect()
}

/// `version + 1` of `config`, as an int32 when it fits (the type servers expect).
fn next_version(config: &Document) -> ShellResult<Bson> {
    let version = config.get("version").and_then(bson_as_i64).ok_or_else(|| {
        ShellError::Type("the replica set config has no numeric version".to_string())
    })?;
    let next = version.checked_add(1).ok_or_else(|| {
        ShellError::Type("the replica set config version cannot grow".to_string())
    })?;
    Ok(i32::try_from(next).map_or(Bson::Int64(next), Bson::Int32))
}

/// `current` with `member` appended under the next free `_id` (unless it names its own) and
/// the version raised.
fn config_with_member(current: &Document, mut member: Document) -> ShellResult<Document> {
    let host = match member.get("host") {
        Some(Bson::String(host)) => host.clone(),
        _ => {
            return Err(ShellError::Type(
                "add(): the member needs a host string".to_string(),
            ));
        }
    };
    let mut members = config_members(current)?;
    if members
        .iter()
        .any(|m| m.get_str("host") == Ok(host.as_str()))
    {
        return Err(ShellError::Type(format!(
            "add(): {host} is already a member of the replica set"
        )));
    }
    if !member.contains_key("_id") {
        let highest = members
            .iter()
            .filter_map(|m| m.get("_id").and_then(bson_as_i64))
            .max();
        let next = highest.map_or(0, |id| id.saturating_add(1));
        let next = i32::try_from(next).map_or(Bson::Int64(next), Bson::Int32);
        // `_id` first, as mongosh shows members.
        let mut with_id = doc! { "_id": next };
        with_id.extend(member);
        member = with_id;
    }
    members.push(member);
    let mut config = current.clone();
    config.insert("members", members);
    config.insert("version", next_version(current)?);
    Ok(config)
}

/// `current` without the member whose host is `host`, and with the version raised.
fn config_without_member(current: &Document, host: &str) -> ShellResult<Document> {
    let mut members = config_members(current)?;
    let before = members.len();
    members.retain(|member| member.get_str("host") != Ok(host));
    if members.len() == before {
        let hosts: Vec<&str> = current
            .get_array("members")
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|member| member.as_document()?.get_str("host").ok())
            .collect();
        return Err(ShellError::Type(format!(
            "remove(): couldn't find {host} in the members ({})",
            hosts.join(", ")
        )));
    }
    let mut config = current.clone();
    config.insert("members", members);
    config.insert("version", next_version(current)?);
    Ok(config)
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
        "startBalancer" | "stopBalancer" | "setBalancerState" => balancer_switch(method, args)?,
        "balancerCollectionStatus" => {
            doc! { "balancerCollectionStatus": args.string("namespace")? }
        }
        "enableBalancing" | "disableBalancing" => doc! {
            "configureCollectionBalancing": args.string("namespace")?,
            "enableBalancing": method == "enableBalancing",
        },
        _ => return zone_command(method, args),
    };
    Ok(command)
}

/// `startBalancer(timeoutMs?)`, `stopBalancer(timeoutMs?)`, `setBalancerState(bool)`.
fn balancer_switch(method: &str, args: &mut Args) -> ShellResult<Document> {
    let start = match method {
        "setBalancerState" => args.optional_bool("state")?.ok_or_else(|| {
            ShellError::Type("setBalancerState(): argument 1 (state) must be a boolean".into())
        })?,
        _ => {
            // mongosh's optional timeout is how long to wait for the switch; the switch is
            // immediate here.
            args.optional_integer("timeout")?;
            method == "startBalancer"
        }
    };
    Ok(if start {
        doc! { "balancerStart": 1 }
    } else {
        doc! { "balancerStop": 1 }
    })
}

/// The zone helpers.
fn zone_command(method: &str, args: &mut Args) -> ShellResult<Document> {
    let command = match method {
        "addShardToZone" => doc! {
            "addShardToZone": args.string("shard")?,
            "zone": args.string("zone")?,
        },
        "removeShardFromZone" => doc! {
            "removeShardFromZone": args.string("shard")?,
            "zone": args.string("zone")?,
        },
        "updateZoneKeyRange" => doc! {
            "updateZoneKeyRange": args.string("namespace")?,
            "min": args.document("min")?,
            "max": args.document("max")?,
            "zone": args.string("zone")?,
        },
        "removeRangeFromZone" => doc! {
            "updateZoneKeyRange": args.string("namespace")?,
            "min": args.document("min")?,
            "max": args.document("max")?,
            "zone": Bson::Null,
        },
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
    fn zone_and_balancer_helpers_send_their_commands() {
        let command = |method: &str, values: Vec<Bson>| {
            let mut args = Args::new(method, values);
            let command = sh_command(method, &mut args).unwrap();
            args.finish().unwrap();
            command
        };
        let text = |value: &str| Bson::String(value.into());
        assert_eq!(
            command("addShardToZone", vec![text("s0"), text("NYC")]),
            doc! { "addShardToZone": "s0", "zone": "NYC" }
        );
        assert_eq!(
            command("removeShardFromZone", vec![text("s0"), text("NYC")]),
            doc! { "removeShardFromZone": "s0", "zone": "NYC" }
        );
        let min = Bson::Document(doc! { "k": 1 });
        let max = Bson::Document(doc! { "k": 9 });
        assert_eq!(
            command(
                "updateZoneKeyRange",
                vec![text("d.c"), min.clone(), max.clone(), text("NYC")]
            ),
            doc! { "updateZoneKeyRange": "d.c", "min": { "k": 1 }, "max": { "k": 9 }, "zone": "NYC" }
        );
        assert_eq!(
            command("removeRangeFromZone", vec![text("d.c"), min, max]),
            doc! { "updateZoneKeyRange": "d.c", "min": { "k": 1 }, "max": { "k": 9 }, "zone": Bson::Null }
        );
        assert_eq!(
            command("startBalancer", vec![]),
            doc! { "balancerStart": 1 }
        );
        assert_eq!(
            command("stopBalancer", vec![Bson::Int32(1000)]),
            doc! { "balancerStop": 1 }
        );
        assert_eq!(
            command("setBalancerState", vec![Bson::Boolean(true)]),
            doc! { "balancerStart": 1 }
        );
        assert_eq!(
            command("setBalancerState", vec![Bson::Boolean(false)]),
            doc! { "balancerStop": 1 }
        );
        assert_eq!(
            command("balancerCollectionStatus", vec![text("d.c")]),
            doc! { "balancerCollectionStatus": "d.c" }
        );
        assert_eq!(
            command("disableBalancing", vec![text("d.c")]),
            doc! { "configureCollectionBalancing": "d.c", "enableBalancing": false }
        );
        assert_eq!(
            command("enableBalancing", vec![text("d.c")]),
            doc! { "configureCollectionBalancing": "d.c", "enableBalancing": true }
        );
        let mut args = Args::new("setBalancerState", vec![]);
        assert!(sh_command("setBalancerState", &mut args).is_err());
        let mut args = Args::new("updateZoneKeyRange", vec![text("d.c"), text("x")]);
        assert!(sh_command("updateZoneKeyRange", &mut args).is_err());
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

    fn three_member_config() -> Document {
        doc! {
            "_id": "shard0",
            "version": 4_i64,
            "term": 2_i64,
            "members": [
                { "_id": 0, "host": "127.0.0.1:1", "priority": 1.0, "votes": 1 },
                { "_id": 4, "host": "127.0.0.1:2", "priority": 1.0, "votes": 1 },
                { "_id": 2, "host": "127.0.0.1:3", "priority": 1.0, "votes": 1 },
            ],
            "settings": { "electionTimeoutMillis": 400_i64 },
        }
    }

    fn edit(method: &str, values: Vec<Bson>) -> ShellResult<ConfigEdit> {
        let mut args = Args::new(method, values);
        let edit = ConfigEdit::from_args(method, &mut args)?;
        args.finish()?;
        Ok(edit)
    }

    fn member_hosts_and_ids(config: &Document) -> Vec<(String, i64)> {
        config_members(config)
            .unwrap()
            .iter()
            .map(|m| {
                let id = m.get("_id").and_then(bson_as_i64).unwrap();
                (m.get_str("host").unwrap().to_string(), id)
            })
            .collect()
    }

    #[test]
    fn rs_helpers_send_replica_set_commands() {
        let command = |method: &str, values: Vec<Bson>| {
            let mut args = Args::new(method, values);
            let command = rs_command(method, &mut args).unwrap();
            args.finish().unwrap();
            command
        };
        assert_eq!(command("status", vec![]), doc! { "replSetGetStatus": 1 });
        assert_eq!(command("conf", vec![]), doc! { "replSetGetConfig": 1 });
        assert_eq!(command("initiate", vec![]), doc! { "replSetInitiate": 1 });
        let config = doc! { "_id": "rs", "members": [{ "_id": 0, "host": "h:1" }] };
        assert_eq!(
            command("initiate", vec![Bson::Document(config.clone())]),
            doc! { "replSetInitiate": config }
        );
        assert_eq!(
            command("stepDown", vec![]),
            doc! { "replSetStepDown": 60_i64 }
        );
        assert_eq!(
            command("stepDown", vec![Bson::Int32(30), Bson::Int32(5)]),
            doc! { "replSetStepDown": 30_i64, "secondaryCatchUpPeriodSecs": 5_i64 }
        );
        assert_eq!(command("hello", vec![]), doc! { "hello": 1 });
        assert_eq!(command("isMaster", vec![]), doc! { "isMaster": 1 });
        let mut args = Args::new("nope", vec![]);
        assert!(matches!(
            rs_command("nope", &mut args),
            Err(ShellError::Type(_))
        ));
        let mut args = Args::new("initiate", vec![Bson::String("x".into())]);
        assert_eq!(
            rs_command("initiate", &mut args).unwrap_err().to_string(),
            "TypeError: initiate(): argument 1 (config) must be an object"
        );
    }

    #[test]
    fn rs_add_appends_the_next_id_and_raises_the_version() {
        let current = three_member_config();
        let add = edit("add", vec![Bson::String("127.0.0.1:9".into())]).unwrap();
        let command = add.command(&current).unwrap();
        let config = command.get_document("replSetReconfig").unwrap();
        assert_eq!(config.get("version"), Some(&Bson::Int32(5)));
        assert_eq!(config.get_str("_id").unwrap(), "shard0");
        assert_eq!(
            config.get_document("settings").unwrap(),
            current.get_document("settings").unwrap()
        );
        assert_eq!(
            member_hosts_and_ids(config),
            [
                ("127.0.0.1:1".to_string(), 0),
                ("127.0.0.1:2".to_string(), 4),
                ("127.0.0.1:3".to_string(), 2),
                ("127.0.0.1:9".to_string(), 5),
            ]
        );
        assert_eq!(command.len(), 1, "no options: {command}");
    }

    #[test]
    fn rs_add_takes_a_member_document_and_keeps_its_fields() {
        let member = doc! { "host": "127.0.0.1:9", "priority": 0, "hidden": true };
        let add = edit("add", vec![Bson::Document(member)]).unwrap();
        let config = add.command(&three_member_config()).unwrap();
        let members = config_members(config.get_document("replSetReconfig").unwrap()).unwrap();
        assert_eq!(
            members.last().unwrap(),
            &doc! { "_id": 5, "host": "127.0.0.1:9", "priority": 0, "hidden": true }
        );
        let own_id = doc! { "_id": 7, "host": "127.0.0.1:9" };
        let add = edit("add", vec![Bson::Document(own_id.clone())]).unwrap();
        let config = add.command(&three_member_config()).unwrap();
        let members = config_members(config.get_document("replSetReconfig").unwrap()).unwrap();
        assert_eq!(members.last().unwrap(), &own_id);
        let arbiter = edit(
            "add",
            vec![Bson::String("127.0.0.1:9".into()), Bson::Boolean(true)],
        )
        .unwrap();
        assert_eq!(
            arbiter,
            ConfigEdit::Add(doc! { "host": "127.0.0.1:9", "arbiterOnly": true })
        );
    }

    #[test]
    fn rs_add_refuses_bad_members() {
        let error = edit("add", vec![Bson::Int32(1)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "TypeError: add(): argument 1 (host or member) must be a string or an object"
        );
        assert!(edit("add", vec![]).is_err());
        let no_host = edit("add", vec![Bson::Document(doc! { "priority": 1 })]).unwrap();
        assert!(no_host.command(&three_member_config()).is_err());
        let existing = edit("add", vec![Bson::String("127.0.0.1:2".into())]).unwrap();
        let error = existing.command(&three_member_config()).unwrap_err();
        assert!(error.to_string().contains("already a member"), "{error}");
        let add = edit("add", vec![Bson::String("127.0.0.1:9".into())]).unwrap();
        assert!(add.command(&doc! { "_id": "rs", "version": 1 }).is_err());
    }

    #[test]
    fn rs_add_to_an_empty_member_list_starts_at_zero() {
        let current = doc! { "_id": "rs", "version": 1, "members": [] };
        let add = edit("add", vec![Bson::String("127.0.0.1:9".into())]).unwrap();
        let command = add.command(&current).unwrap();
        let config = command.get_document("replSetReconfig").unwrap();
        assert_eq!(
            member_hosts_and_ids(config),
            [("127.0.0.1:9".to_string(), 0)]
        );
        assert_eq!(config.get("version"), Some(&Bson::Int32(2)));
    }

    #[test]
    fn rs_remove_drops_the_host_and_raises_the_version() {
        let remove = edit("remove", vec![Bson::String("127.0.0.1:2".into())]).unwrap();
        let command = remove.command(&three_member_config()).unwrap();
        let config = command.get_document("replSetReconfig").unwrap();
        assert_eq!(
            member_hosts_and_ids(config),
            [
                ("127.0.0.1:1".to_string(), 0),
                ("127.0.0.1:3".to_string(), 2)
            ]
        );
        assert_eq!(config.get("version"), Some(&Bson::Int32(5)));
        let missing = edit("remove", vec![Bson::String("127.0.0.1:7".into())]).unwrap();
        let error = missing.command(&three_member_config()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "TypeError: remove(): couldn't find 127.0.0.1:7 in the members (127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3)"
        );
        assert!(edit("remove", vec![Bson::Int32(0)]).is_err());
    }

    #[test]
    fn rs_reconfig_sends_the_given_config_with_the_next_version() {
        let wanted = doc! { "_id": "shard0", "version": 1, "members": [{ "_id": 0, "host": "127.0.0.1:1" }] };
        let reconfig = edit(
            "reconfig",
            vec![
                Bson::Document(wanted),
                Bson::Document(doc! { "force": true }),
            ],
        )
        .unwrap();
        let command = reconfig.command(&three_member_config()).unwrap();
        assert_eq!(
            command,
            doc! {
                "replSetReconfig": {
                    "_id": "shard0",
                    "version": 5,
                    "members": [{ "_id": 0, "host": "127.0.0.1:1" }],
                },
                "force": true,
            }
        );
        let big = doc! { "version": i64::from(i32::MAX) };
        assert_eq!(
            next_version(&big).unwrap(),
            Bson::Int64(i64::from(i32::MAX) + 1)
        );
        assert!(next_version(&doc! { "version": "x" }).is_err());
        assert!(edit("reconfig", vec![]).is_err());
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
