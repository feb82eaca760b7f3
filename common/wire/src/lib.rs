//! The MongoDB wire protocol as Shoal speaks it to clients: framing, parsing of OP_MSG and the
//! legacy OP_QUERY handshake, reply encoding, and a connection server that hands each command to
//! a [`CommandHandler`].
//!
//! Why a separate crate: the router and every member's admin port answer drivers and mongosh, and
//! both must agree byte for byte on what is accepted. Everything here is protocol only; what a
//! command means is the handler's business.
//!
//! Layering: [`frame`] cuts a byte stream into [`RawMessage`]s without looking inside, [`parse`]
//! turns one into a [`Request`] (or a reply, for clients), [`encode`] builds messages, [`server`]
//! runs connections, and [`client`] is a minimal request/response helper for tests and tools.
//!
//! What is deliberately absent: OP_COMPRESSED (the hello reply never offers compression, so a
//! conforming driver never sends it), exhaust streaming (a server is never required to stream),
//! and the legacy CRUD opcodes.

pub mod client;
pub mod encode;
pub mod error;
pub mod frame;
pub mod parse;
pub mod server;

pub use client::round_trip;
pub use encode::{encode_op_msg, encode_op_msg_with_sequence, encode_op_query, encode_op_reply};
pub use error::WireError;
pub use frame::{MsgHeader, RawMessage, read_message};
pub use parse::{OpMsg, OpQuery, Request, parse_reply, parse_request};
pub use server::{CONNECTIONS_MAX, CommandHandler, RequestContext, serve};

/// The largest message a peer may send or receive, header included. Drivers read it from the
/// hello reply (`maxMessageSizeBytes`); the value is MongoDB's.
pub const MESSAGE_BYTES_MAX: usize = 48_000_000;

/// The largest user document (`maxBsonObjectSize` in the hello reply).
pub const BSON_OBJECT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The largest document this crate accepts or sends: a command or reply may exceed the user
/// limit by MongoDB's internal slack, so that a 16 MiB document still fits inside a command that
/// wraps it.
pub const BSON_OBJECT_INTERNAL_BYTES_MAX: usize = BSON_OBJECT_BYTES_MAX + 16 * 1024;

/// The most write statements in one batch (`maxWriteBatchSize` in the hello reply).
pub const WRITE_BATCH_SIZE_MAX: usize = 100_000;

/// The length of [`MsgHeader`] on the wire.
pub const HEADER_BYTES: usize = 16;

/// Opcode of OP_REPLY, the legacy answer to OP_QUERY.
pub const OP_REPLY: i32 = 1;
/// Opcode of OP_QUERY, which pymongo and the Node driver still use for the first hello.
pub const OP_QUERY: i32 = 2004;
/// Opcode of OP_COMPRESSED, which Shoal never negotiates and therefore rejects.
pub const OP_COMPRESSED: i32 = 2012;
/// Opcode of OP_MSG, the only modern request and reply format.
pub const OP_MSG: i32 = 2013;

/// OP_MSG flag bit 0: a CRC-32C of the message follows the sections.
pub const FLAG_CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag bit 1: the sender expects no reply (w:0 writes).
pub const FLAG_MORE_TO_COME: u32 = 1 << 1;
/// OP_MSG flag bit 16: the client could take a streamed reply. Optional, so it is ignored.
pub const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;

// A reply of the largest allowed document must fit in one message with room for any header.
const _: () = assert!(BSON_OBJECT_INTERNAL_BYTES_MAX + 64 <= MESSAGE_BYTES_MAX);
// Frame lengths are int32 on the wire.
const _: () = assert!(MESSAGE_BYTES_MAX <= i32::MAX as usize);
