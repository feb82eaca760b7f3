//! Replies to the server-information commands every MongoDB server answers the same way,
//! whatever its role: `buildInfo`, `ping`, `getParameter`, `getLog`, `hostInfo`,
//! `getCmdLineOpts`, `whatsmyuri`, and the common part of `hello` and `serverStatus`.
//!
//! Wire compatibility: we report MongoDB 7.0 (wire version 21), which every current driver and
//! mongosh accept; the `gitVersion` names Shoal's own version.

use std::time::Instant;

use bson::{Bson, Document, doc};
use shoal_common::{CommandError, ErrorCode};

/// The MongoDB server version whose behaviour Shoal follows.
pub const MONGODB_VERSION: &str = "7.0.0";
/// The wire version of MongoDB 7.0.
pub const MAX_WIRE_VERSION: i32 = 21;
/// Shoal's own version.
pub const SHOAL_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Largest BSON document a client may send.
pub const BSON_OBJECT_BYTES_MAX: i32 = 16 * 1024 * 1024;
/// Largest wire message.
pub const MESSAGE_BYTES_MAX: i32 = 48_000_000;
/// Largest write batch drivers should send.
pub const WRITE_BATCH_SIZE_MAX: i32 = 100_000;
/// Advertised session timeout; its presence turns on sessions and retryable writes in drivers.
pub const LOGICAL_SESSION_TIMEOUT_MINUTES: i32 = 30;

/// Fields common to every `hello` reply. The caller adds the role-specific fields (`msg:
/// "isdbgrid"` for the router; `setName`, `hosts`... for members) and `isWritablePrimary` or
/// `ismaster` depending on the command name.
pub fn hello_common(command: &Document, connection_id: u64) -> Document {
    let mut reply = doc! {
        "maxBsonObjectSize": BSON_OBJECT_BYTES_MAX,
        "maxMessageSizeBytes": MESSAGE_BYTES_MAX,
        "maxWriteBatchSize": WRITE_BATCH_SIZE_MAX,
        "localTime": bson::DateTime::now(),
        "logicalSessionTimeoutMinutes": LOGICAL_SESSION_TIMEOUT_MINUTES,
        "connectionId": i32::try_from(connection_id % (i32::MAX as u64)).unwrap_or(0),
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": false,
    };
    if command.contains_key("helloOk") {
        reply.insert("helloOk", true);
    }
    reply
}

/// The key under which `hello`'s writability flag goes: `isWritablePrimary` for `hello`,
/// `ismaster` for the legacy `isMaster`/`ismaster`.
pub fn writable_field(command_name: &str) -> &'static str {
    if command_name == "hello" {
        "isWritablePrimary"
    } else {
        "ismaster"
    }
}

/// `buildInfo`.
pub fn build_info() -> Document {
    doc! {
        "version": MONGODB_VERSION,
        "gitVersion": format!("shoal-{SHOAL_VERSION}"),
        "modules": Bson::Array(vec![]),
        "allocator": "system",
        "javascriptEngine": "none",
        "sysInfo": "deprecated",
        "versionArray": [7, 0, 0, 0],
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": BSON_OBJECT_BYTES_MAX,
        "storageEngines": ["rocksdb"],
        "buildEnvironment": { "target_os": std::env::consts::OS, "target_arch": std::env::consts::ARCH },
        "ok": 1.0,
    }
}

/// `getParameter`: answers `featureCompatibilityVersion` and `*`; any other named parameter is
/// unknown, as on a server that does not have it.
pub fn get_parameter(command: &Document) -> Result<Document, CommandError> {
    let all = matches!(command.get("getParameter"), Some(Bson::String(s)) if s == "*");
    let mut reply = Document::new();
    let fcv = doc! { "version": "7.0" };
    if all || command.contains_key("featureCompatibilityVersion") {
        reply.insert("featureCompatibilityVersion", fcv);
    }
    if all {
        reply.insert("authenticationMechanisms", Bson::Array(vec![]));
    }
    if reply.is_empty() {
        return Err(CommandError::new(
            ErrorCode::INVALID_OPTIONS,
            "no option found to get",
        ));
    }
    reply.insert("ok", 1.0);
    Ok(reply)
}

/// `getLog`: `'*'` lists the log names; `startupWarnings` and `global` return empty logs (the
/// process logs to stderr, which its supervisor keeps).
pub fn get_log(command: &Document) -> Result<Document, CommandError> {
    match command.get("getLog") {
        Some(Bson::String(name)) if name == "*" => {
            Ok(doc! { "names": ["global", "startupWarnings"], "ok": 1.0 })
        }
        Some(Bson::String(name)) if name == "global" || name == "startupWarnings" => {
            Ok(doc! { "totalLinesWritten": 0, "log": Bson::Array(vec![]), "ok": 1.0 })
        }
        Some(Bson::String(name)) => {
            Err(CommandError::bad_value(format!("no RamLog named: {name}")))
        }
        Some(other) => Err(CommandError::type_mismatch("getLog", "string", other)),
        None => Err(CommandError::bad_value("getLog needs a log name")),
    }
}

/// `hostInfo`.
pub fn host_info() -> Document {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    doc! {
        "system": {
            "currentTime": bson::DateTime::now(),
            "hostname": hostname(),
            "cpuAddrSize": 64,
            "numCores": i32::try_from(cores).unwrap_or(1),
            "cpuArch": std::env::consts::ARCH,
        },
        "os": { "type": std::env::consts::OS, "name": std::env::consts::OS },
        "extra": {},
        "ok": 1.0,
    }
}

/// `getCmdLineOpts`.
pub fn cmd_line_opts() -> Document {
    let argv: Vec<Bson> = std::env::args().map(Bson::String).collect();
    doc! { "argv": argv, "parsed": {}, "ok": 1.0 }
}

/// The host name, for `hostInfo` and `serverStatus.host` fallbacks.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// Operation counters reported in `serverStatus.opcounters`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpCounters {
    /// Documents-level insert operations.
    pub insert: u64,
    /// Queries (`find`).
    pub query: u64,
    /// Update statements.
    pub update: u64,
    /// Delete statements.
    pub delete: u64,
    /// `getMore` calls.
    pub getmore: u64,
    /// Other commands.
    pub command: u64,
}

/// The common part of `serverStatus`: `host`, `version`, `process`, `pid`, `uptime`,
/// `uptimeMillis`, `localTime`, `opcounters`, `connections`.
pub fn server_status(
    host: &str,
    process: &str,
    started: Instant,
    counters: OpCounters,
    connections_current: u64,
) -> Document {
    let uptime = started.elapsed();
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    doc! {
        "host": host,
        "version": MONGODB_VERSION,
        "process": process,
        "pid": i64::from(std::process::id()),
        "uptime": uptime.as_secs_f64().floor(),
        "uptimeMillis": as_i64(u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX)),
        "uptimeEstimate": as_i64(uptime.as_secs()),
        "localTime": bson::DateTime::now(),
        "opcounters": {
            "insert": as_i64(counters.insert),
            "query": as_i64(counters.query),
            "update": as_i64(counters.update),
            "delete": as_i64(counters.delete),
            "getmore": as_i64(counters.getmore),
            "command": as_i64(counters.command),
        },
        "connections": { "current": as_i64(connections_current), "available": 20_000 },
        "ok": 1.0,
    }
}

/// The name of a command: the first key of its document.
pub fn command_name(command: &Document) -> Option<&str> {
    command.keys().next().map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_common_has_what_drivers_require() {
        let reply = hello_common(&doc! {"hello": 1, "helloOk": true}, 7);
        assert_eq!(
            reply.get_i32("maxBsonObjectSize").unwrap(),
            16 * 1024 * 1024
        );
        assert_eq!(reply.get_i32("maxMessageSizeBytes").unwrap(), 48_000_000);
        assert_eq!(reply.get_i32("logicalSessionTimeoutMinutes").unwrap(), 30);
        assert!(reply.get_bool("helloOk").unwrap());
        assert!(
            hello_common(&doc! {"isMaster": 1}, 7)
                .get("helloOk")
                .is_none()
        );
        assert_eq!(writable_field("hello"), "isWritablePrimary");
        assert_eq!(writable_field("isMaster"), "ismaster");
    }

    #[test]
    fn get_log_and_parameter_answer_mongosh() {
        assert!(get_log(&doc! {"getLog": "startupWarnings"}).is_ok());
        assert!(get_log(&doc! {"getLog": 1}).is_err());
        let fcv = get_parameter(&doc! {"getParameter": 1, "featureCompatibilityVersion": 1});
        assert!(fcv.is_ok());
        assert_eq!(
            get_parameter(&doc! {"getParameter": "foo"})
                .unwrap_err()
                .code,
            ErrorCode::INVALID_OPTIONS
        );
    }
}
