//! Small helpers over the official Rust driver: clients with short timeouts, readiness polling,
//! and error-code extraction, so tests can assert the exact MongoDB error codes.

use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use mongodb::{
    Client,
    error::{ErrorKind, WriteFailure},
};

use crate::POLL_INTERVAL;

/// Server selection timeout for clients of a node believed to be up.
pub const SELECTION_TIMEOUT_MS: u64 = 10_000;
/// Server selection timeout for one readiness probe.
const PROBE_TIMEOUT_MS: u64 = 1_000;

/// A client for one node on 127.0.0.1, connected directly (no discovery).
pub async fn direct_client(port: u16) -> anyhow::Result<Client> {
    client_for(&direct_uri(port, SELECTION_TIMEOUT_MS)).await
}

/// The URI of one node with `directConnection=true`.
pub fn direct_uri(port: u16, selection_timeout_ms: u64) -> String {
    format!(
        "mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS={selection_timeout_ms}&connectTimeoutMS=2000"
    )
}

/// A client for `uri`.
pub async fn client_for(uri: &str) -> anyhow::Result<Client> {
    Ok(Client::with_uri_str(uri).await?)
}

/// Runs `ping` on the node at `port` once, with a short timeout.
pub async fn ping_once(port: u16) -> anyhow::Result<()> {
    // The TCP probe answers "not listening yet" in microseconds instead of a selection timeout.
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let client = client_for(&direct_uri(port, PROBE_TIMEOUT_MS)).await?;
    let reply = client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await;
    client.shutdown().immediate(true).await;
    let reply = reply?;
    anyhow::ensure!(is_ok(&reply), "ping answered {reply}");
    Ok(())
}

/// Polls `ping` on `port` until it succeeds or `timeout` passes.
pub async fn wait_ping(port: u16, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let attempt = ping_once(port).await;
        match attempt {
            Ok(()) => return Ok(start.elapsed()),
            Err(err) if start.elapsed() >= timeout => {
                anyhow::bail!("port {port} did not answer ping within {timeout:?}: {err}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Whether a command reply has `ok: 1` (as int32, int64 or double).
pub fn is_ok(reply: &Document) -> bool {
    match reply.get("ok") {
        Some(Bson::Double(ok)) => *ok == 1.0,
        Some(Bson::Int32(ok)) => *ok == 1,
        Some(Bson::Int64(ok)) => *ok == 1,
        Some(Bson::Boolean(ok)) => *ok,
        _ => false,
    }
}

/// The server error code carried by a driver error: a command error, a single write error, or
/// the first write error of a failed `insert_many`.
pub fn error_code(err: &mongodb::error::Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => Some(concern.code),
        ErrorKind::InsertMany(insert) => insert
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|e| e.code),
        _ => None,
    }
}

/// Reads a numeric field as i64 whatever its BSON integer or double type.
pub fn get_i64(doc: &Document, key: &str) -> Option<i64> {
    match doc.get(key)? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        // Counts are whole numbers; a double count that is not whole is a server bug the caller
        // will see as a mismatch.
        Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
        _ => None,
    }
}
