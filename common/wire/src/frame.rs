//! Cutting a byte stream into messages: the 16-byte header and a length-checked body.
//!
//! Framing looks at nothing but the header, so it works for requests and replies alike. Lengths
//! are checked before any memory is committed, and the body buffer grows only as bytes actually
//! arrive, so a peer that announces a large message and then stalls costs nothing.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{
    HEADER_BYTES, MESSAGE_BYTES_MAX, OP_COMPRESSED, OP_MSG, OP_QUERY, OP_REPLY, WireError,
};

/// The initial body buffer; larger bodies grow it as their bytes arrive.
const BODY_PREALLOC_BYTES_MAX: usize = 64 * 1024;

/// The header every message starts with. Fields are the raw int32s from the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgHeader {
    /// Total message length, header included.
    pub message_length: i32,
    /// Sender-chosen id of this message.
    pub request_id: i32,
    /// In a reply, the requestID it answers; 0 in requests.
    pub response_to: i32,
    /// The message type (`OP_MSG`, `OP_QUERY`, ...).
    pub op_code: i32,
}

impl MsgHeader {
    /// Reads a header from its 16 little-endian bytes.
    pub fn from_bytes(bytes: &[u8; HEADER_BYTES]) -> MsgHeader {
        let field = |idx: usize| {
            i32::from_le_bytes([bytes[idx], bytes[idx + 1], bytes[idx + 2], bytes[idx + 3]])
        };
        MsgHeader {
            message_length: field(0),
            request_id: field(4),
            response_to: field(8),
            op_code: field(12),
        }
    }

    /// The header's 16 wire bytes. OP_MSG checksums cover them.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&self.message_length.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.request_id.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.response_to.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.op_code.to_le_bytes());
        bytes
    }
}

/// One framed message: its header and the `message_length - 16` bytes after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    /// The header.
    pub header: MsgHeader,
    /// Everything after the header.
    pub body: Vec<u8>,
}

/// The smallest message of an opcode that can carry anything useful: the header, the opcode's
/// fixed fields and one empty document (5 bytes). Unknown opcodes need at least one body byte.
pub fn message_bytes_min(op_code: i32) -> usize {
    const EMPTY_DOCUMENT_BYTES: usize = 5;
    let fixed_bytes = match op_code {
        // flagBits, section kind byte.
        OP_MSG => 4 + 1 + EMPTY_DOCUMENT_BYTES,
        // flags, empty cstring, numberToSkip, numberToReturn.
        OP_QUERY => 4 + 1 + 4 + 4 + EMPTY_DOCUMENT_BYTES,
        // responseFlags, cursorID, startingFrom, numberReturned; zero documents is legal.
        OP_REPLY => 4 + 8 + 4 + 4,
        // originalOpcode, uncompressedSize, compressorId, at least one byte (pymongo: > 25).
        OP_COMPRESSED => 4 + 4 + 1 + 1,
        _ => 1,
    };
    HEADER_BYTES + fixed_bytes
}

/// Reads one message. `Ok(None)` means the peer closed the stream cleanly between messages.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<RawMessage>, WireError> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    if !read_header_or_eof(r, &mut header_bytes).await? {
        return Ok(None);
    }
    let header = MsgHeader::from_bytes(&header_bytes);
    let body_bytes = checked_body_bytes(&header)?;
    let mut body = Vec::with_capacity(body_bytes.min(BODY_PREALLOC_BYTES_MAX));
    // Lossless: body_bytes < MESSAGE_BYTES_MAX.
    let read_bytes = (&mut *r)
        .take(body_bytes as u64)
        .read_to_end(&mut body)
        .await?;
    if read_bytes < body_bytes {
        return Err(WireError::Truncated);
    }
    assert_eq!(body.len(), body_bytes);
    Ok(Some(RawMessage { header, body }))
}

/// Fills `header` and returns true, or returns false on EOF before its first byte.
async fn read_header_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    header: &mut [u8; HEADER_BYTES],
) -> Result<bool, WireError> {
    let mut filled = 0;
    while filled < HEADER_BYTES {
        let read_bytes = r.read(&mut header[filled..]).await?;
        if read_bytes == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(WireError::Truncated);
        }
        filled += read_bytes;
    }
    Ok(true)
}

/// The body length the header announces, once it is within the limits.
fn checked_body_bytes(header: &MsgHeader) -> Result<usize, WireError> {
    let length = usize::try_from(header.message_length)
        .ok()
        .filter(|length| message_bytes_min(header.op_code) <= *length)
        .ok_or(WireError::FrameTooShort {
            length: header.message_length,
            op_code: header.op_code,
        })?;
    if MESSAGE_BYTES_MAX < length {
        return Err(WireError::FrameTooLarge {
            length,
            max: MESSAGE_BYTES_MAX,
        });
    }
    Ok(length - HEADER_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(length: i32, op_code: i32) -> Vec<u8> {
        MsgHeader {
            message_length: length,
            request_id: 7,
            response_to: 0,
            op_code,
        }
        .to_bytes()
        .to_vec()
    }

    async fn read(bytes: &[u8]) -> Result<Option<RawMessage>, WireError> {
        let mut stream = bytes;
        read_message(&mut stream).await
    }

    #[tokio::test]
    async fn clean_eof_before_a_header_is_none() {
        assert!(read(&[]).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn eof_inside_the_header_is_truncated() {
        let bytes = header_bytes(100, OP_MSG);
        assert!(matches!(read(&bytes[..9]).await, Err(WireError::Truncated)));
    }

    #[tokio::test]
    async fn short_lengths_are_rejected() {
        for length in [0, 15, 16, 25, -1, i32::MIN] {
            let result = read(&header_bytes(length, OP_MSG)).await;
            assert!(
                matches!(result, Err(WireError::FrameTooShort { .. })),
                "length {length}: {result:?}"
            );
        }
        let result = read(&header_bytes(33, OP_QUERY)).await;
        assert!(matches!(result, Err(WireError::FrameTooShort { .. })));
    }

    #[tokio::test]
    async fn huge_lengths_are_rejected_before_reading_the_body() {
        for length in [48_000_001, i32::MAX] {
            let result = read(&header_bytes(length, OP_MSG)).await;
            assert!(
                matches!(result, Err(WireError::FrameTooLarge { .. })),
                "{result:?}"
            );
        }
    }

    #[tokio::test]
    async fn eof_inside_the_body_is_truncated() {
        let mut bytes = header_bytes(40, OP_MSG);
        bytes.extend_from_slice(&[0u8; 10]);
        assert!(matches!(read(&bytes).await, Err(WireError::Truncated)));
    }

    #[tokio::test]
    async fn a_complete_frame_is_read_and_the_next_one_waits() {
        let mut bytes = header_bytes(20, 9999);
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend_from_slice(&header_bytes(20, 9999));
        let mut stream = &bytes[..];
        let message = read_message(&mut stream).await.unwrap().unwrap();
        assert_eq!(message.header.op_code, 9999);
        assert_eq!(message.header.request_id, 7);
        assert_eq!(message.body, vec![1, 2, 3, 4]);
        assert_eq!(stream.len(), HEADER_BYTES);
    }

    #[test]
    fn header_round_trips() {
        let header = MsgHeader {
            message_length: 26,
            request_id: -3,
            response_to: 9,
            op_code: OP_MSG,
        };
        assert_eq!(MsgHeader::from_bytes(&header.to_bytes()), header);
    }
}
