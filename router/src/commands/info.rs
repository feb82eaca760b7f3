//! The router's answers to the handshake and server-information commands. The router says it
//! is a mongos (`msg: "isdbgrid"`) and never sends `setName`, so drivers treat it as one.

use std::sync::atomic::Ordering;

use bson::{Document, doc};
use shoal_common::{CommandError, ErrorCode};
use shoal_node::info;

use super::Router;

impl Router {
    pub(super) fn hello(&self, name: &str, command: &Document, connection_id: u64) -> Document {
        let mut reply = info::hello_common(command, connection_id);
        reply.insert(info::writable_field(name), true);
        reply.insert("msg", "isdbgrid");
        reply.insert("ok", 1.0);
        reply
    }

    pub(super) fn info_command(
        &self,
        name: &str,
        command: &Document,
    ) -> Result<Document, CommandError> {
        match name {
            "ping" => Ok(doc! {"ok": 1.0}),
            "buildInfo" | "buildinfo" => Ok(info::build_info()),
            "serverStatus" => Ok(self.server_status()),
            "getParameter" => info::get_parameter(command),
            "getLog" => info::get_log(command),
            "hostInfo" => Ok(info::host_info()),
            "getCmdLineOpts" => Ok(info::cmd_line_opts()),
            "whatsmyuri" => Ok(doc! {"you": "", "ok": 1.0}),
            "endSessions" | "killSessions" | "killAllSessions" | "refreshSessions" => {
                Ok(doc! {"ok": 1.0})
            }
            "startSession" => Ok(doc! {
                "id": {"id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: shoal_common::CollectionUuid::random().0.as_bytes().to_vec() }},
                "timeoutMinutes": info::LOGICAL_SESSION_TIMEOUT_MINUTES,
                "ok": 1.0,
            }),
            "connectionStatus" => Ok(doc! {
                "authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}, "ok": 1.0,
            }),
            "listCommands" => Ok(list_commands()),
            other => Err(CommandError::new(
                ErrorCode::COMMAND_NOT_FOUND,
                format!("no such command: '{other}'"),
            )),
        }
    }

    fn server_status(&self) -> Document {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let counters = info::OpCounters {
            insert: load(&self.counters.insert),
            query: load(&self.counters.query),
            update: load(&self.counters.update),
            delete: load(&self.counters.delete),
            getmore: load(&self.counters.getmore),
            command: load(&self.counters.command),
        };
        info::server_status(&self.host, "mongos", self.started, counters, 0)
    }
}

fn list_commands() -> Document {
    let names = [
        "aggregate",
        "addShard",
        "addShardToZone",
        "balancerCollectionStatus",
        "balancerStatus",
        "buildInfo",
        "count",
        "create",
        "delete",
        "distinct",
        "drop",
        "dropDatabase",
        "enableSharding",
        "find",
        "findAndModify",
        "getMore",
        "hello",
        "insert",
        "isMaster",
        "killCursors",
        "listCollections",
        "listDatabases",
        "listIndexes",
        "configureCollectionBalancing",
        "listShards",
        "mergeChunks",
        "moveChunk",
        "moveRange",
        "movePrimary",
        "ping",
        "removeShard",
        "removeShardFromZone",
        "serverStatus",
        "shardCollection",
        "split",
        "update",
        "updateZoneKeyRange",
    ];
    let mut commands = Document::new();
    for name in names {
        commands.insert(name, doc! {"help": ""});
    }
    doc! {"commands": commands, "ok": 1.0}
}
