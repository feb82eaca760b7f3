//! A minimal wire client: one command out, one reply back. For tests, health checks and tools
//! that talk to a router or admin port without pulling in a full driver.

use bson::Document;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{WireError, encode::encode_op_msg, frame::read_message, parse::parse_reply};

/// Sends `command` as an OP_MSG with `$db` set to `db`, waits for the reply and returns its
/// body document. The reply must answer `request_id`; a command failure is still `Ok` (check
/// `ok` or use `CommandError::from_reply`).
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request_id: i32,
    db: &str,
    mut command: Document,
) -> Result<Document, WireError> {
    command.insert("$db", db);
    let request = encode_op_msg(request_id, 0, 0, &command)?;
    stream.write_all(&request).await?;
    stream.flush().await?;
    let Some(reply) = read_message(stream).await? else {
        return Err(WireError::UnexpectedReply(
            "connection closed before the reply".into(),
        ));
    };
    if reply.header.response_to != request_id {
        return Err(WireError::UnexpectedReply(format!(
            "reply answers request {}, expected {request_id}",
            reply.header.response_to
        )));
    }
    parse_reply(&reply)
}
