//! The RPC layer's error type and its one conversion into a MongoDB command error.
//!
//! Callers (router, config server, shards) mostly forward an RPC failure to their own client, so
//! the codes follow what mongos reports for the same situation: an unreachable peer is
//! `HostUnreachable`, a peer that does not answer in time is `NetworkTimeout`, and a peer that
//! speaks garbage is a protocol error rather than a server bug.

use shoal_common::{CommandError, ErrorCode};

/// Everything that can go wrong setting up or using the internal RPC.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The TLS configuration could not be built (bad CA, key mismatch, unsupported suite).
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// A local I/O failure: reading or writing certificate files, binding a socket.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection to a peer could not be established (handshake failed, refused, bad cert).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer address as the caller gave it (`host:port`).
        addr: String,
        /// Why the connection failed.
        reason: String,
    },
    /// The peer did not answer within the caller's deadline.
    #[error("request to {addr} timed out")]
    Timeout {
        /// The peer address as the caller gave it (`host:port`).
        addr: String,
    },
    /// The connection or stream closed before the reply arrived.
    #[error("connection closed: {0}")]
    Closed(String),
    /// A frame announced (or would need) more than [`crate::FRAME_BYTES_MAX`] bytes.
    #[error("frame of {0} bytes exceeds the RPC frame limit")]
    FrameTooLarge(usize),
    /// A frame did not hold one valid BSON document.
    #[error("invalid BSON in RPC frame: {0}")]
    InvalidBson(String),
    /// `host:port` could not be parsed or resolved.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Certificate generation or loading failed.
    #[error("certificate error: {0}")]
    Cert(String),
}

impl RpcError {
    /// The MongoDB code this error is reported with; one code per variant.
    pub fn code(&self) -> ErrorCode {
        match self {
            RpcError::Tls(_) => ErrorCode::INTERNAL_ERROR,
            RpcError::Io(_) => ErrorCode::INTERNAL_ERROR,
            RpcError::Connect { .. } => ErrorCode::HOST_UNREACHABLE,
            RpcError::Timeout { .. } => ErrorCode::NETWORK_TIMEOUT,
            RpcError::Closed(_) => ErrorCode::HOST_UNREACHABLE,
            RpcError::FrameTooLarge(_) => ErrorCode::PROTOCOL_ERROR,
            RpcError::InvalidBson(_) => ErrorCode::INVALID_BSON,
            RpcError::Resolve(_) => ErrorCode::HOST_NOT_FOUND,
            RpcError::Cert(_) => ErrorCode::INTERNAL_ERROR,
        }
    }
}

impl From<RpcError> for CommandError {
    fn from(error: RpcError) -> CommandError {
        CommandError::new(error.code(), error.to_string())
    }
}

impl From<rcgen::Error> for RpcError {
    fn from(error: rcgen::Error) -> RpcError {
        RpcError::Cert(error.to_string())
    }
}

impl From<rustls::Error> for RpcError {
    fn from(error: rustls::Error) -> RpcError {
        RpcError::Tls(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_failures_map_to_network_codes() {
        let unreachable = CommandError::from(RpcError::Connect {
            addr: "h:1".to_owned(),
            reason: "refused".to_owned(),
        });
        assert_eq!(unreachable.code, ErrorCode::HOST_UNREACHABLE);
        assert!(unreachable.errmsg.contains("h:1"));
        let timeout = CommandError::from(RpcError::Timeout {
            addr: "h:1".to_owned(),
        });
        assert_eq!(timeout.code, ErrorCode::NETWORK_TIMEOUT);
        let closed = CommandError::from(RpcError::Closed("reset".to_owned()));
        assert_eq!(closed.code, ErrorCode::HOST_UNREACHABLE);
        let resolve = CommandError::from(RpcError::Resolve("nohost:1".to_owned()));
        assert_eq!(resolve.code, ErrorCode::HOST_NOT_FOUND);
    }

    #[test]
    fn protocol_and_setup_failures_map_to_their_codes() {
        assert_eq!(RpcError::FrameTooLarge(1).code(), ErrorCode::PROTOCOL_ERROR);
        assert_eq!(
            RpcError::InvalidBson(String::new()).code(),
            ErrorCode::INVALID_BSON
        );
        assert_eq!(
            RpcError::Cert(String::new()).code(),
            ErrorCode::INTERNAL_ERROR
        );
        assert_eq!(
            RpcError::Tls(String::new()).code(),
            ErrorCode::INTERNAL_ERROR
        );
        let io = RpcError::Io(std::io::Error::other("disk"));
        assert_eq!(io.code(), ErrorCode::INTERNAL_ERROR);
    }
}
