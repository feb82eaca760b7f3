//! Shoal's internal RPC: how the router, the config server and the shards talk to each other.
//!
//! The transport is QUIC (quinn) with mutual TLS against a cluster CA ([`certs`]): every node
//! presents a certificate signed by the CA and accepts only peers that do. A client keeps one
//! long-lived connection per peer and opens one bidirectional stream per request, so requests
//! never queue behind each other (no head-of-line blocking) and opening a stream costs no round
//! trip. Each stream carries one length-prefixed BSON request and one reply ([`FRAME_BYTES_MAX`]
//! bounds both).
//!
//! Messages are plain BSON documents, the same shape as MongoDB commands and replies, so a shard
//! answers the router much as mongod answers mongos, and a failure is an `{ok: 0, code, ...}`
//! reply built from a `CommandError`. Transport failures are [`RpcError`]s.
//!
//! Callers depend on [`RpcTransport`], not on QUIC, so tests can use [`InMemoryTransport`].

pub mod certs;
mod client;
mod error;
mod frame;
mod server;
mod tls;
mod transport;

pub use certs::TlsPaths;
pub use client::{CALL_RETRIES_MAX, PEERS_MAX, RpcClient, SERVER_NAME};
pub use error::RpcError;
pub use frame::FRAME_BYTES_MAX;
pub use server::{CONNECTIONS_MAX, REQUEST_READ_TIMEOUT, RpcHandler, RpcServer};
pub use tls::{ALPN, BIDI_STREAMS_MAX, IDLE_TIMEOUT_MAX, KEEP_ALIVE_INTERVAL};
pub use transport::{CallFuture, InMemoryTransport, RpcTransport};
