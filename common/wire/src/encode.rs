//! Building wire messages: OP_MSG replies and requests, OP_REPLY for the legacy handshake, and
//! OP_QUERY for tests that play an old driver.
//!
//! Every encoder is fallible rather than panicking: a document can fail to serialize (a key with
//! a NUL byte) and a message can outgrow `MESSAGE_BYTES_MAX`, and neither may take a process down.
//! Replies follow what pymongo accepts: flags 0, one kind-0 section, no checksum.

use bson::Document;

use crate::{
    FLAG_CHECKSUM_PRESENT, HEADER_BYTES, MESSAGE_BYTES_MAX, OP_MSG, OP_QUERY, OP_REPLY, WireError,
};

/// OP_MSG section kind of the command body.
const SECTION_KIND_BODY: u8 = 0;
/// OP_MSG section kind of a document sequence.
const SECTION_KIND_SEQUENCE: u8 = 1;

/// An OP_MSG with one kind-0 section. If `flags` has checksumPresent set, the CRC-32C is
/// appended; replies pass 0.
pub fn encode_op_msg(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &Document,
) -> Result<Vec<u8>, WireError> {
    let body_bytes = bson::to_vec(body)?;
    op_msg_from_bytes(request_id, response_to, flags, &body_bytes)
}

/// An OP_MSG request (responseTo 0) with a kind-0 body and one kind-1 sequence, as pymongo
/// sends `insert.documents`. `checksum` sets checksumPresent and appends the CRC-32C.
pub fn encode_op_msg_with_sequence(
    request_id: i32,
    flags: u32,
    body: &Document,
    identifier: &str,
    docs: &[Document],
    checksum: bool,
) -> Result<Vec<u8>, WireError> {
    let flags = if checksum {
        flags | FLAG_CHECKSUM_PRESENT
    } else {
        flags & !FLAG_CHECKSUM_PRESENT
    };
    let mut builder = MessageBuilder::new(request_id, 0, OP_MSG);
    builder.put(&flags.to_le_bytes());
    builder.put(&[SECTION_KIND_BODY]);
    builder.document(body)?;
    builder.put(&[SECTION_KIND_SEQUENCE]);
    let size_at = builder.bytes.len();
    builder.put(&0i32.to_le_bytes());
    builder.cstring(identifier)?;
    for doc in docs {
        builder.document(doc)?;
    }
    builder.patch_length(size_at)?;
    builder.finish(checksum)
}

/// An OP_REPLY carrying one command reply: flags 0, cursorID 0, startingFrom 0,
/// numberReturned 1.
pub fn encode_op_reply(
    request_id: i32,
    response_to: i32,
    reply: &Document,
) -> Result<Vec<u8>, WireError> {
    let reply_bytes = bson::to_vec(reply)?;
    op_reply_from_bytes(request_id, response_to, &reply_bytes)
}

/// An OP_QUERY command the way pymongo sends its first hello: flags 0, numberToSkip 0,
/// numberToReturn -1, no field selector. `ns` is e.g. `admin.$cmd`.
pub fn encode_op_query(request_id: i32, ns: &str, query: &Document) -> Result<Vec<u8>, WireError> {
    let mut builder = MessageBuilder::new(request_id, 0, OP_QUERY);
    builder.put(&0i32.to_le_bytes());
    builder.cstring(ns)?;
    builder.put(&0i32.to_le_bytes());
    builder.put(&(-1i32).to_le_bytes());
    builder.document(query)?;
    builder.finish(false)
}

/// An OP_MSG with flags and one kind-0 section made of already-serialized BSON, so the server
/// can size-check a reply before framing it.
pub(crate) fn op_msg_from_bytes(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body_bytes: &[u8],
) -> Result<Vec<u8>, WireError> {
    let mut builder = MessageBuilder::new(request_id, response_to, OP_MSG);
    builder.put(&flags.to_le_bytes());
    builder.put(&[SECTION_KIND_BODY]);
    builder.put(body_bytes);
    builder.finish(flags & FLAG_CHECKSUM_PRESENT != 0)
}

/// An OP_REPLY around one already-serialized reply document.
pub(crate) fn op_reply_from_bytes(
    request_id: i32,
    response_to: i32,
    reply_bytes: &[u8],
) -> Result<Vec<u8>, WireError> {
    let mut builder = MessageBuilder::new(request_id, response_to, OP_REPLY);
    builder.put(&0i32.to_le_bytes()); // responseFlags
    builder.put(&0i64.to_le_bytes()); // cursorID
    builder.put(&0i32.to_le_bytes()); // startingFrom
    builder.put(&1i32.to_le_bytes()); // numberReturned
    builder.put(reply_bytes);
    builder.finish(false)
}

/// Appends fields after a header whose length is filled in by [`MessageBuilder::finish`].
struct MessageBuilder {
    bytes: Vec<u8>,
}

impl MessageBuilder {
    fn new(request_id: i32, response_to: i32, op_code: i32) -> Self {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&request_id.to_le_bytes());
        bytes.extend_from_slice(&response_to.to_le_bytes());
        bytes.extend_from_slice(&op_code.to_le_bytes());
        assert_eq!(bytes.len(), HEADER_BYTES);
        MessageBuilder { bytes }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn document(&mut self, doc: &Document) -> Result<(), WireError> {
        doc.to_writer(&mut self.bytes)?;
        Ok(())
    }

    fn cstring(&mut self, text: &str) -> Result<(), WireError> {
        if text.contains('\0') {
            return Err(WireError::Encode(format!(
                "cstring {text:?} contains a NUL byte"
            )));
        }
        self.put(text.as_bytes());
        self.put(&[0]);
        Ok(())
    }

    /// Writes, at `at`, the int32 length of everything from `at` to the current end.
    fn patch_length(&mut self, at: usize) -> Result<(), WireError> {
        let length = self.bytes.len() - at;
        let length_i32 = i32::try_from(length).map_err(|_| WireError::FrameTooLarge {
            length,
            max: MESSAGE_BYTES_MAX,
        })?;
        self.bytes[at..at + 4].copy_from_slice(&length_i32.to_le_bytes());
        Ok(())
    }

    fn finish(mut self, checksum: bool) -> Result<Vec<u8>, WireError> {
        let checksum_bytes = if checksum { 4 } else { 0 };
        let length = self.bytes.len() + checksum_bytes;
        if MESSAGE_BYTES_MAX < length {
            return Err(WireError::FrameTooLarge {
                length,
                max: MESSAGE_BYTES_MAX,
            });
        }
        if checksum {
            // The checksum covers the final header, so the length must already include it.
            self.bytes.extend_from_slice(&[0; 4]);
            self.patch_length(0)?;
            let covered = self.bytes.len() - 4;
            let crc = crc32c::crc32c(&self.bytes[..covered]);
            self.bytes[covered..].copy_from_slice(&crc.to_le_bytes());
        } else {
            self.patch_length(0)?;
        }
        assert_eq!(self.bytes.len(), length);
        Ok(self.bytes)
    }
}
