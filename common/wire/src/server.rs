//! The connection server: accepts sockets, reads requests one at a time and answers each in
//! order with whatever the [`CommandHandler`] returns.
//!
//! Protocol rules live here so every handler gets them for free: `$db` must be present in an
//! OP_MSG, OP_QUERY is only good for `<db>.$cmd`, moreToCome requests get no reply, replies carry
//! the request's id in responseTo, and an oversize reply becomes an error. A frame-level problem
//! closes only its own connection; it is the client's fault, so it is logged at debug level.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bson::{Bson, Document};
use shoal_common::{CommandError, ErrorCode};
use tokio::{
    io::{AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tracing::Instrument;

use crate::{
    BSON_OBJECT_INTERNAL_BYTES_MAX, OP_MSG, RawMessage, WireError,
    encode::{op_msg_from_bytes, op_reply_from_bytes},
    frame::read_message,
    parse::{OpMsg, OpQuery, Request, parse_request, raw_more_to_come},
};

/// The most client connections served at once; a connection over the limit is closed at once.
pub const CONNECTIONS_MAX: usize = 20_000;

/// How long to pause after a failed accept (e.g. out of file descriptors) before trying again,
/// so the loop does not spin.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 50;

/// Read buffer per connection: most commands fit, so one syscall reads a whole message.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Source of connection ids, process-wide so ids stay unique across listeners.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Who sent a command, for the handler's logs, `connectionId` and handshake rules.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// Process-unique id of the connection.
    pub conn_id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The command came as a legacy OP_QUERY (only the handshake should).
    pub legacy_op_query: bool,
}

/// What runs the commands a connection receives.
pub trait CommandHandler: Send + Sync + 'static {
    /// Runs one command; returns the full reply document (`{ok: 1, ...}` or
    /// `CommandError::to_document()`).
    ///
    /// For OP_MSG, `command` is the whole body, `$db` and other generic fields included; `db` is
    /// `$db`. For OP_QUERY, `db` comes from the namespace and the command has no `$db`.
    fn handle(
        &self,
        ctx: RequestContext,
        db: String,
        command: Document,
    ) -> impl std::future::Future<Output = Document> + Send;
}

/// Accepts connections on `listener` and serves each in its own task. Runs until the future is
/// dropped or its task aborted, which also ends every connection it started.
pub async fn serve<H: CommandHandler>(
    listener: TcpListener,
    handler: Arc<H>,
) -> std::io::Result<()> {
    serve_with_limit(listener, handler, CONNECTIONS_MAX).await
}

/// [`serve`] with a chosen connection limit, so tests can reach it.
async fn serve_with_limit<H: CommandHandler>(
    listener: TcpListener,
    handler: Arc<H>,
    connections_max: usize,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(connections_max));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => admit(&mut connections, &permits, &handler, stream, peer),
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = joined
                    && err.is_panic()
                {
                    tracing::error!(error = %err, "connection task panicked");
                }
            }
        }
    }
}

fn admit<H: CommandHandler>(
    connections: &mut JoinSet<()>,
    permits: &Arc<Semaphore>,
    handler: &Arc<H>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
        tracing::info!(%peer, "connection limit reached; closing the new connection");
        return;
    };
    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(conn_id, error = %err, "cannot set TCP_NODELAY");
    }
    let handler = Arc::clone(handler);
    let span = tracing::debug_span!("conn", conn_id, %peer);
    connections.spawn(
        async move {
            let _permit = permit;
            run_connection(stream, handler.as_ref(), conn_id, peer).await;
        }
        .instrument(span),
    );
}

/// What to do after one request.
enum Answer {
    Reply(Vec<u8>),
    NoReply,
    Close(WireError),
}

async fn run_connection<H: CommandHandler>(
    stream: TcpStream,
    handler: &H,
    conn_id: u64,
    peer: SocketAddr,
) {
    tracing::debug!("connection opened");
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read_half);
    let mut next_reply_id: i32 = 1;
    loop {
        let message = match read_message(&mut reader).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(error = %err, "closing connection after a read error");
                break;
            }
        };
        let ctx = RequestContext {
            conn_id,
            peer,
            legacy_op_query: false,
        };
        match answer(handler, ctx, message, next_reply_id).await {
            Answer::Reply(bytes) => {
                next_reply_id = next_reply_id.wrapping_add(1);
                if let Err(err) = write_half.write_all(&bytes).await {
                    tracing::debug!(error = %err, "closing connection after a write error");
                    break;
                }
            }
            Answer::NoReply => {}
            Answer::Close(err) => {
                tracing::debug!(error = %err, "closing connection after a protocol error");
                break;
            }
        }
    }
    tracing::debug!("connection closed");
}

async fn answer<H: CommandHandler>(
    handler: &H,
    ctx: RequestContext,
    message: RawMessage,
    reply_id: i32,
) -> Answer {
    let reply_to = ReplyTo {
        request_id: reply_id,
        response_to: message.header.request_id,
    };
    match parse_request(&message) {
        Ok(Request::Msg(op_msg)) => answer_op_msg(handler, ctx, op_msg, reply_to).await,
        Ok(Request::Query(op_query)) => answer_op_query(handler, ctx, op_query, reply_to).await,
        Err(err) if err.closes_connection() => Answer::Close(err),
        Err(err) => {
            tracing::debug!(error = %err, "rejecting a well-framed but invalid message");
            let reply = CommandError::from(err).to_document();
            if message.header.op_code != OP_MSG {
                return reply_to.op_reply(&reply);
            }
            if raw_more_to_come(&message.body) {
                return Answer::NoReply;
            }
            reply_to.op_msg(&reply)
        }
    }
}

async fn answer_op_msg<H: CommandHandler>(
    handler: &H,
    ctx: RequestContext,
    op_msg: OpMsg,
    reply_to: ReplyTo,
) -> Answer {
    let reply = match database_of(&op_msg.body) {
        Ok(db) => handler.handle(ctx, db, op_msg.body).await,
        Err(err) => err.to_document(),
    };
    if op_msg.more_to_come {
        return Answer::NoReply;
    }
    reply_to.op_msg(&reply)
}

/// The `$db` of an OP_MSG command, which every driver sends and the server requires.
fn database_of(body: &Document) -> Result<String, CommandError> {
    if body.is_empty() {
        return Err(CommandError::bad_value(
            "OP_MSG with an empty command document",
        ));
    }
    match body.get("$db") {
        None => Err(CommandError::bad_value(
            "OP_MSG requests require a $db argument",
        )),
        Some(Bson::String(db)) if db.is_empty() => Err(CommandError::new(
            ErrorCode::INVALID_NAMESPACE,
            "Invalid database name: ''",
        )),
        Some(Bson::String(db)) => Ok(db.clone()),
        Some(other) => Err(CommandError::type_mismatch("$db", "string", other)),
    }
}

async fn answer_op_query<H: CommandHandler>(
    handler: &H,
    mut ctx: RequestContext,
    op_query: OpQuery,
    reply_to: ReplyTo,
) -> Answer {
    ctx.legacy_op_query = true;
    let reply = match legacy_command_db(&op_query) {
        Ok(db) => handler.handle(ctx, db, op_query.query).await,
        Err(err) => err.to_document(),
    };
    reply_to.op_reply(&reply)
}

/// The database of an OP_QUERY command, following FerretDB and mongod: only `<db>.$cmd`
/// namespaces carry commands, and a command returns exactly one document.
fn legacy_command_db(op_query: &OpQuery) -> Result<String, CommandError> {
    let Some(db) = op_query.full_collection_name.strip_suffix(".$cmd") else {
        return Err(CommandError::new(
            ErrorCode::OP_QUERY_UNSUPPORTED,
            "OP_QUERY is no longer supported. The client driver may require an upgrade. \
             For more details see https://dochub.mongodb.org/core/legacy-opcode-removal",
        ));
    };
    if !matches!(op_query.number_to_return, -1..=1) {
        return Err(CommandError::new(
            ErrorCode::LOCATION16979,
            format!(
                "Bad numberToReturn ({}) for $cmd type ns - can only be 1 or -1",
                op_query.number_to_return
            ),
        ));
    }
    if db.is_empty() {
        return Err(CommandError::new(
            ErrorCode::INVALID_NAMESPACE,
            "Invalid database name: ''",
        ));
    }
    Ok(db.to_owned())
}

/// The ids a reply carries.
#[derive(Clone, Copy)]
struct ReplyTo {
    request_id: i32,
    response_to: i32,
}

impl ReplyTo {
    fn op_msg(self, reply: &Document) -> Answer {
        self.frame(reply, |bytes| {
            op_msg_from_bytes(self.request_id, self.response_to, 0, bytes)
        })
    }

    fn op_reply(self, reply: &Document) -> Answer {
        self.frame(reply, |bytes| {
            op_reply_from_bytes(self.request_id, self.response_to, bytes)
        })
    }

    /// Serializes and frames a reply. A reply that cannot be sent (too large, or not valid
    /// BSON) is replaced by an error reply, so the client is never left waiting.
    fn frame(
        self,
        reply: &Document,
        framer: impl Fn(&[u8]) -> Result<Vec<u8>, WireError>,
    ) -> Answer {
        let framed = reply_bytes(reply).and_then(|bytes| framer(&bytes));
        let err = match framed {
            Ok(message) => return Answer::Reply(message),
            Err(err) => err,
        };
        tracing::info!(error = %err, "replacing a reply that cannot be sent");
        let fallback = CommandError::from(err).to_document();
        match reply_bytes(&fallback).and_then(|bytes| framer(&bytes)) {
            Ok(message) => Answer::Reply(message),
            Err(err) => Answer::Close(err),
        }
    }
}

fn reply_bytes(reply: &Document) -> Result<Vec<u8>, WireError> {
    let bytes = bson::to_vec(reply)?;
    if BSON_OBJECT_INTERNAL_BYTES_MAX < bytes.len() {
        return Err(WireError::DocumentTooLarge {
            bytes: bytes.len(),
            max: BSON_OBJECT_INTERNAL_BYTES_MAX,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
