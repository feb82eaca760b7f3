//! Errors of the wire layer, and which of them end a connection.
//!
//! The split matters: once the framing of a stream is in doubt, nothing after it can be trusted,
//! so frame-level errors close the socket; a well-framed message with bad content is answered
//! with an error reply and the connection goes on, as MongoDB does.

use shoal_common::{CommandError, ErrorCode};

/// A problem reading, parsing or encoding a wire message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The header's messageLength is smaller than the smallest useful message of its opcode.
    #[error("message length {length} is too short for opcode {op_code}")]
    FrameTooShort {
        /// The messageLength from the header.
        length: i32,
        /// The opCode from the header.
        op_code: i32,
    },
    /// The message is longer than `MESSAGE_BYTES_MAX`.
    #[error("message length {length} exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length of the message, from its header or as encoded.
        length: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The stream ended in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// An opcode Shoal does not accept (including OP_COMPRESSED, which it never negotiates).
    #[error("unsupported opcode {0}")]
    UnsupportedOpcode(i32),
    /// The OP_MSG CRC-32C did not match its content.
    #[error(
        "OP_MSG checksum mismatch: message says {stated:#010x}, content gives {computed:#010x}"
    )]
    BadChecksum {
        /// The checksum at the end of the message.
        stated: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// One of the required OP_MSG flag bits (0-15) that Shoal does not know is set.
    #[error("unrecognized required OP_MSG flag bits {0:#06x}")]
    UnknownRequiredFlags(u32),
    /// The message is framed correctly but a document in it is not valid BSON.
    #[error("invalid BSON: {0}")]
    InvalidBson(String),
    /// A document is larger than the wire layer accepts or sends.
    #[error("BSON document of {bytes} bytes exceeds the maximum of {max} bytes")]
    DocumentTooLarge {
        /// The document's size.
        bytes: usize,
        /// The limit it broke.
        max: usize,
    },
    /// The sections or fields of a message cannot be delimited.
    #[error("malformed message: {0}")]
    MalformedSection(String),
    /// An OP_MSG document sequence has the name of a field the command body already has.
    #[error("OP_MSG document sequence '{0}' duplicates a field of the command body")]
    DuplicateField(String),
    /// A reply that does not answer the request (wrong opcode or responseTo, or none at all).
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// A document could not be serialized (e.g. a key containing a NUL byte).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// Whether the connection must be closed: true when the stream's framing can no longer be
    /// trusted or the socket is gone; false when the message was delimited correctly and can be
    /// answered with an error reply.
    pub fn closes_connection(&self) -> bool {
        match self {
            WireError::FrameTooShort { .. }
            | WireError::FrameTooLarge { .. }
            | WireError::Truncated
            | WireError::UnsupportedOpcode(_)
            | WireError::BadChecksum { .. }
            | WireError::MalformedSection(_)
            | WireError::UnexpectedReply(_)
            | WireError::Io(_) => true,
            WireError::UnknownRequiredFlags(_)
            | WireError::InvalidBson(_)
            | WireError::DocumentTooLarge { .. }
            | WireError::DuplicateField(_)
            | WireError::Encode(_) => false,
        }
    }

    /// The MongoDB code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooShort { .. }
            | WireError::FrameTooLarge { .. }
            | WireError::Truncated
            | WireError::UnsupportedOpcode(_)
            | WireError::BadChecksum { .. }
            | WireError::UnknownRequiredFlags(_)
            | WireError::MalformedSection(_)
            | WireError::UnexpectedReply(_) => ErrorCode::PROTOCOL_ERROR,
            WireError::InvalidBson(_) => ErrorCode::INVALID_BSON,
            WireError::DocumentTooLarge { .. } => ErrorCode::BSON_OBJECT_TOO_LARGE,
            WireError::DuplicateField(_) => ErrorCode::BAD_VALUE,
            WireError::Encode(_) => ErrorCode::INTERNAL_ERROR,
            // Drivers treat a lost socket as a network error; HostUnreachable is the code that
            // matches it and is retryable.
            WireError::Io(_) => ErrorCode::HOST_UNREACHABLE,
        }
    }
}

impl From<WireError> for CommandError {
    fn from(err: WireError) -> Self {
        CommandError::new(err.code(), err.to_string())
    }
}

impl From<bson::de::Error> for WireError {
    fn from(err: bson::de::Error) -> Self {
        WireError::InvalidBson(err.to_string())
    }
}

impl From<bson::ser::Error> for WireError {
    fn from(err: bson::ser::Error) -> Self {
        WireError::Encode(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_code_and_a_close_policy() {
        let cases = [
            (
                WireError::FrameTooShort {
                    length: 3,
                    op_code: 2013,
                },
                17,
                true,
            ),
            (WireError::FrameTooLarge { length: 1, max: 0 }, 17, true),
            (WireError::Truncated, 17, true),
            (WireError::UnsupportedOpcode(2012), 17, true),
            (
                WireError::BadChecksum {
                    stated: 1,
                    computed: 2,
                },
                17,
                true,
            ),
            (WireError::UnknownRequiredFlags(4), 17, false),
            (WireError::InvalidBson("x".into()), 22, false),
            (
                WireError::DocumentTooLarge { bytes: 2, max: 1 },
                10334,
                false,
            ),
            (WireError::MalformedSection("x".into()), 17, true),
            (WireError::DuplicateField("documents".into()), 2, false),
            (WireError::UnexpectedReply("x".into()), 17, true),
            (WireError::Encode("x".into()), 1, false),
            (WireError::Io(std::io::Error::other("x")), 6, true),
        ];
        for (err, code, closes) in cases {
            assert_eq!(err.closes_connection(), closes, "{err}");
            let command_error = CommandError::from(err);
            assert_eq!(command_error.code.0, code, "{}", command_error.errmsg);
        }
    }
}
