//! Storage failures, kept apart from command errors so that a broken disk or corrupt bytes are
//! never confused with a client mistake. Each variant maps to one MongoDB code in the single
//! `From<StoreError> for CommandError` below.

use shoal_common::{CommandError, ErrorCode};

/// A failure of the storage layer underneath the command engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key-value backend (RocksDB) reported an error: I/O, a full disk, a closed database.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// Bytes read back from storage do not decode: an invariant of what we wrote is broken.
    #[error("corrupt stored data at key {key}: {why}")]
    Corrupt {
        /// The key, hex-encoded, so the record can be found and inspected.
        key: String,
        /// What did not decode.
        why: String,
    },
}

impl StoreError {
    /// A corruption error for `key`.
    pub(crate) fn corrupt(key: &[u8], why: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            key: hex(key),
            why: why.into(),
        }
    }
}

/// Lower-case hex of `bytes`, for keys in messages and for hashes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

impl From<StoreError> for CommandError {
    fn from(err: StoreError) -> CommandError {
        let code = match err {
            StoreError::Backend(_) => ErrorCode::UNKNOWN_ERROR,
            StoreError::Corrupt { .. } => ErrorCode::INTERNAL_ERROR,
        };
        CommandError::new(code, err.to_string())
    }
}
