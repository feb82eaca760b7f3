//! `shoal dump` and `shoal restore`: logical backups through the router, in mongodump's layout
//! (`DIR/<db>/<coll>.bson` plus `<coll>.metadata.json`, optionally gzipped), so a dump is
//! readable by MongoDB's own tools and a mongodump directory can be restored into Shoal.
//!
//! The file formats (the BSON stream, the metadata JSON, the directory layout and the
//! db/collection filters) live in I/O-free modules with unit tests; `dump` and `restore` only
//! move bytes between the driver and the files.
//!
//! `physical` is the other kind: `shoal backup`, RocksDB checkpoints of every replica set in a
//! content-addressed store.

pub mod dump;
pub mod layout;
pub mod metadata;
pub mod physical;
pub mod progress;
pub mod restore;
pub mod stream;

use mongodb::{Client, options::ClientOptions};

/// What a dump file (or the selection of what to dump or restore) can be wrong about, found
/// without touching the disk. The caller adds the file's name.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A document's int32 length prefix is impossible.
    #[error(
        "the document at byte {offset} declares {length} bytes, outside {}..={} bytes",
        stream::DOCUMENT_BYTES_MIN,
        stream::DOCUMENT_BYTES_MAX
    )]
    LengthOutOfBounds {
        /// Where the document starts in the (decompressed) stream.
        offset: u64,
        /// The declared length.
        length: i64,
    },
    /// The stream ended inside a document.
    #[error(
        "truncated: the document at byte {offset} needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        /// Where the document starts.
        offset: u64,
        /// Bytes the document (or its length prefix) needs.
        needed: u64,
        /// Bytes left in the stream.
        available: u64,
    },
    /// The bytes are framed correctly but are not a valid BSON document.
    #[error("the document at byte {offset} is not valid BSON: {reason}")]
    InvalidDocument {
        /// Where the document starts.
        offset: u64,
        /// What the BSON parser said.
        reason: String,
    },
    /// Reading the stream failed (including a corrupt gzip stream).
    #[error("read failed at byte {offset}: {source}")]
    Io {
        /// Bytes consumed before the failure.
        offset: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A metadata file is not what `shoal dump` or mongodump writes.
    #[error("invalid metadata: {0}")]
    Metadata(String),
    /// `--db` / `--collection` cannot select anything.
    #[error("{0}")]
    Selection(String),
    /// A file name in a dump directory cannot be mapped back to a collection.
    #[error("invalid dump file name {name:?}: {reason}")]
    FileName {
        /// The file name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Connects the driver to `uri` (normally the router). The driver connects lazily, so the first
/// command reports an unreachable server; `app_name` shows up in the server's logs.
pub async fn connect(uri: &str, app_name: &str) -> anyhow::Result<Client> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|error| anyhow::anyhow!("invalid connection string {uri:?}: {error}"))?;
    options.app_name = Some(app_name.to_owned());
    Client::with_options(options)
        .map_err(|error| anyhow::anyhow!("cannot create a client for {uri:?}: {error}"))
}
